package devicesim

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/fieldhub/fieldhub/telemetry"
)

// Expectation keys.
const (
	// ExpectStored: readings the hub stored for the fleet's devices, counted
	// through Hub.CountStored on each device's first numeric or bool metric.
	// "all" means every acknowledged reading without an injected fault.
	ExpectStored = "stored"
	// ExpectRejected: dead letters the hub kept for the fleet's devices
	// (Hub.CountRejected). "all" means every malformed and out-of-range
	// message sent.
	ExpectRejected = "rejected"
	// ExpectErrors: rejections the hub reported to the devices on
	// devices/{id}/errors. "all" as for rejected.
	ExpectErrors = "errors"
	// ExpectReplies: command replies the devices sent (commands the hub
	// delivered and got answered). "all" means every decodable command
	// received.
	ExpectReplies = "replies"
	// ExpectDelivered: telemetry messages acknowledged by the broker. "all"
	// means every message published.
	ExpectDelivered = "delivered"
)

var expectKeys = []string{ExpectStored, ExpectRejected, ExpectErrors, ExpectReplies, ExpectDelivered}

// Expectation is one assertion of a run: "stored=all", "rejected>=3".
type Expectation struct {
	Key string
	Op  string // "=", ">=" or "<="
	All bool   // the value was "all"
	N   uint64
}

func (e Expectation) String() string {
	v := strconv.FormatUint(e.N, 10)
	if e.All {
		v = "all"
	}
	return e.Key + e.Op + v
}

// ParseExpectation parses KEY=N, KEY>=N, KEY<=N or KEY=all.
func ParseExpectation(s string) (Expectation, error) {
	i := strings.IndexAny(s, "=<>")
	if i <= 0 {
		return Expectation{}, fmt.Errorf("expectation %q: want KEY=N, KEY>=N, KEY<=N or KEY=all with KEY one of %s", s, strings.Join(expectKeys, ", "))
	}
	e := Expectation{Key: strings.TrimSpace(s[:i])}
	rest := s[i:]
	for _, op := range []string{">=", "<=", "="} {
		if strings.HasPrefix(rest, op) {
			e.Op = op
			rest = rest[len(op):]
			break
		}
	}
	if e.Op == "" {
		return Expectation{}, fmt.Errorf("expectation %q: operator must be =, >= or <=", s)
	}
	known := false
	for _, k := range expectKeys {
		known = known || k == e.Key
	}
	if !known {
		return Expectation{}, fmt.Errorf("expectation %q: unknown key %q (want one of %s)", s, e.Key, strings.Join(expectKeys, ", "))
	}
	rest = strings.TrimSpace(rest)
	if rest == "all" {
		e.All = true
		return e, nil
	}
	n, err := strconv.ParseUint(rest, 10, 64)
	if err != nil {
		return Expectation{}, fmt.Errorf("expectation %q: value must be a count or \"all\"", s)
	}
	e.N = n
	return e, nil
}

// ParseExpectations parses a list of expectations.
func ParseExpectations(ss []string) ([]Expectation, error) {
	out := make([]Expectation, 0, len(ss))
	for _, s := range ss {
		e, err := ParseExpectation(s)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}

// Hub is what a run asks the hub to check its expectations.
// FieldhubCLI implements it.
type Hub interface {
	CountStored(ctx context.Context, device, metric string, from, to time.Time) (int, error)
	CountRejected(ctx context.Context, devices []string) (int, error)
}

// Outcome is the result of one expectation.
type Outcome struct {
	Expectation string `json:"expectation"`
	Want        uint64 `json:"want"`
	Got         uint64 `json:"got"`
	OK          bool   `json:"ok"`
	Error       string `json:"error,omitempty"`
}

// Check evaluates expectations against the fleet's counters and, for
// stored and rejected, the hub; from and to bound the stored readings'
// timestamps (clock skew is added by Check).
func (f *Fleet) Check(ctx context.Context, exps []Expectation, hub Hub, from, to time.Time) []Outcome {
	st := f.Stats()
	out := make([]Outcome, 0, len(exps))
	for _, e := range exps {
		o := Outcome{Expectation: e.String(), Want: e.N}
		var got uint64
		var err error
		switch e.Key {
		case ExpectStored:
			if e.All {
				o.Want = st.ExpectedStored
			}
			got, err = f.countStored(ctx, hub, from, to)
		case ExpectRejected:
			if e.All {
				o.Want = st.Malformed + st.OutOfRange
			}
			got, err = f.countRejected(ctx, hub)
		case ExpectErrors:
			if e.All {
				o.Want = st.Malformed + st.OutOfRange
			}
			got = st.HubErrors
		case ExpectReplies:
			if e.All {
				o.Want = st.CommandsReceived - st.CommandsInvalid
			}
			got = st.Replies
		case ExpectDelivered:
			if e.All {
				o.Want = st.Published
			}
			got = st.Delivered
		}
		o.Got = got
		if err != nil {
			o.Error = err.Error()
		} else {
			switch e.Op {
			case "=":
				o.OK = got == o.Want
			case ">=":
				o.OK = got >= o.Want
			case "<=":
				o.OK = got <= o.Want
			}
		}
		out = append(out, o)
	}
	return out
}

var errNoHub = errors.New("this expectation needs the hub (pass --fieldhub and --data-dir)")

func (f *Fleet) countStored(ctx context.Context, hub Hub, from, to time.Time) (uint64, error) {
	if hub == nil {
		return 0, errNoHub
	}
	var n uint64
	for _, d := range f.devices {
		metric := d.countMetric()
		if metric == "" {
			return 0, fmt.Errorf("device %s has no numeric or bool metric to count stored readings by", d.ID())
		}
		skew := d.cfg.Faults.ClockSkew.Abs()
		c, err := hub.CountStored(ctx, d.ID(), metric, from.Add(-skew-time.Second), to.Add(skew+time.Second))
		if err != nil {
			return 0, err
		}
		n += uint64(c)
	}
	return n, nil
}

func (f *Fleet) countRejected(ctx context.Context, hub Hub) (uint64, error) {
	if hub == nil {
		return 0, errNoHub
	}
	ids := make([]string, len(f.devices))
	for i, d := range f.devices {
		ids[i] = d.ID()
	}
	n, err := hub.CountRejected(ctx, ids)
	return uint64(n), err
}

// countMetric is the first metric the time-series store keeps (numbers
// and bools): every healthy reading carries it once.
func (d *Device) countMetric() string {
	for _, m := range d.cfg.Metrics {
		if m.numeric() || m.Model == ModelToggle {
			return m.Name
		}
		if m.Model == ModelConstant {
			if v, err := constValue(m.Value); err == nil && v.Kind == telemetry.KindBool {
				return m.Name
			}
		}
	}
	return ""
}
