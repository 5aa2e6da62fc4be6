package devicesim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/fieldhub/fieldhub/telemetry"
)

// reading is one sample of all of a device's metrics, kept encoded so a
// flush after a reconnect sends exactly what was measured.
type reading struct {
	seq uint64
	ts  int64
	obj []byte // the JSON object, or truncated JSON when malformed

	malformed  bool
	outOfRange bool
	skewed     bool
	dup        bool
}

// faulted readings are sent alone, never inside a batch, so the hub
// rejects exactly one message per injected fault.
func (r *reading) faulted() bool { return r.malformed || r.outOfRange }

// appendReading encodes the telemetry contract's object:
// {"ts":<ms>,"seq":<n>,"metrics":{...}}. quoted holds the metric names
// already JSON-quoted.
func appendReading(b []byte, ts int64, seq uint64, quoted [][]byte, vals []telemetry.Value) []byte {
	b = append(b, `{"ts":`...)
	b = strconv.AppendInt(b, ts, 10)
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, `,"metrics":{`...)
	for i, v := range vals {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, quoted[i]...)
		b = append(b, ':')
		b = appendValue(b, v)
	}
	return append(b, "}}"...)
}

func appendValue(b []byte, v telemetry.Value) []byte {
	switch v.Kind {
	case telemetry.KindNumber:
		// 'g' with -1 is the shortest text that parses back to the same
		// float64, so a test can compare values exactly.
		return strconv.AppendFloat(b, v.Num, 'g', -1, 64)
	case telemetry.KindBool:
		return strconv.AppendBool(b, v.Bool)
	default:
		q, _ := json.Marshal(v.Str)
		return append(b, q...)
	}
}

// appendBatch encodes readings as a JSON array (a batch in the contract);
// a duplicated reading appears twice.
func appendBatch(b []byte, rs []*reading) []byte {
	b = append(b, '[')
	first := true
	for _, r := range rs {
		n := 1
		if r.dup {
			n = 2
		}
		for range n {
			if !first {
				b = append(b, ',')
			}
			first = false
			b = append(b, r.obj...)
		}
	}
	return append(b, ']')
}

// Telemetry is a decoded telemetry message, as a test or a checker sees it.
type Telemetry struct {
	TS      int64          `json:"ts"`
	Seq     uint64         `json:"seq"`
	Metrics map[string]any `json:"metrics"`
}

// DecodeTelemetry decodes a telemetry payload: one object or a batch.
func DecodeTelemetry(payload []byte) ([]Telemetry, error) {
	if t := bytes.TrimLeft(payload, " \t\r\n"); len(t) > 0 && t[0] == '[' {
		var out []Telemetry
		if err := json.Unmarshal(payload, &out); err != nil {
			return nil, err
		}
		return out, nil
	}
	var t Telemetry
	if err := json.Unmarshal(payload, &t); err != nil {
		return nil, err
	}
	return []Telemetry{t}, nil
}

// command is the payload on devices/{id}/commands/{name}.
type command struct {
	ID        string          `json:"id"`
	Name      string          `json:"name"`
	Params    json.RawMessage `json:"params"`
	ExpiresAt string          `json:"expires_at"`
}

// Reply is the payload a device publishes on devices/{id}/replies/{cmd id}.
type Reply struct {
	Status string         `json:"status"`
	Result map[string]any `json:"result,omitempty"`
	Error  string         `json:"error,omitempty"`
}

func okReply(result map[string]any) Reply { return Reply{Status: "ok", Result: result} }

func errReply(format string, args ...any) Reply {
	return Reply{Status: "error", Error: fmt.Sprintf(format, args...)}
}

// twinDesired is the retained payload on devices/{id}/twin/desired.
type twinDesired struct {
	Version int64                      `json:"version"`
	Desired map[string]json.RawMessage `json:"desired"`
}

// TwinReported is what a device publishes on devices/{id}/twin/reported.
type TwinReported struct {
	Version  int64                      `json:"version"`
	Reported map[string]json.RawMessage `json:"reported"`
}

// jsonValue turns a JSON scalar into a metric value.
func jsonValue(raw json.RawMessage) (telemetry.Value, error) {
	var x any
	if err := json.Unmarshal(raw, &x); err != nil {
		return telemetry.Value{}, err
	}
	switch v := x.(type) {
	case float64:
		return telemetry.Value{Kind: telemetry.KindNumber, Num: v}, nil
	case bool:
		return telemetry.Value{Kind: telemetry.KindBool, Bool: v}, nil
	case string:
		return telemetry.Value{Kind: telemetry.KindString, Str: v}, nil
	case nil:
		return telemetry.Value{}, errors.New("value is missing")
	}
	return telemetry.Value{}, fmt.Errorf("value %s is not a number, bool or string", raw)
}
