package telemetry

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"
)

// Documented limits of the payload codecs. A payload over a limit is
// rejected whole with Code CodeTooLarge; nothing of it is decoded.
const (
	// MaxMetricNameLen bounds a metric name, in bytes (names are ASCII).
	MaxMetricNameLen = 128
	// MaxMetricsPerReading bounds the metrics of one reading (one fieldhub
	// JSON object, or the SenML records sharing one time).
	MaxMetricsPerReading = 1000
	// MaxReadingsPerBatch bounds the objects of a fieldhub JSON batch.
	MaxReadingsPerBatch = 10000
	// MaxSenMLRecords bounds the records of a SenML pack.
	MaxSenMLRecords = 10000
	// MaxStringValueLen bounds a string metric value, in bytes.
	MaxStringValueLen = 4096
	// MaxTS is the latest accepted timestamp, 9999-12-31T23:59:59.999Z in
	// unix ms; the earliest is 0 (1970-01-01T00:00:00Z).
	MaxTS = 253402300799999
	// maxDepth bounds the nesting of values the decoders skip over (SenML
	// extension fields), so a hostile payload cannot exhaust the stack.
	maxDepth = 32
)

// Reason codes of decode and validation errors, for counters, dead letters
// and the errors topic.
const (
	CodeBadJSON       = "bad_json"       // not well-formed JSON
	CodeBadField      = "bad_field"      // well-formed, but a field is missing, unknown, of the wrong type or has a bad value
	CodeTooLarge      = "too_large"      // over one of the documented limits
	CodeWrongType     = "wrong_type"     // schema: metric of another type than its device type declares
	CodeOutOfRange    = "out_of_range"   // schema: number outside [min, max]
	CodeUnknownMetric = "unknown_metric" // schema: metric not declared and the device type rejects unknown ones
	// CodeBadPayload is what ReasonCode returns for errors that carry no code.
	CodeBadPayload = "bad_payload"
)

// Format is a telemetry payload format.
type Format uint8

const (
	FormatJSON  Format = iota // fieldhub JSON: {"ts":…, "seq":…, "metrics":{…}} or an array of those
	FormatSenML               // SenML JSON, RFC 8428
)

func (f Format) String() string {
	if f == FormatSenML {
		return "senml"
	}
	return "json"
}

// DecodeError says precisely why a payload was refused.
type DecodeError struct {
	// Index is the position of the offending reading in a fieldhub JSON
	// batch, or of the offending record in a SenML pack; -1 when the payload
	// is a single reading or the error concerns the payload as a whole.
	Index int
	// Field is the path of the offending field, e.g. "metrics.temperature",
	// "ts", or for SenML the record field ("v", "bt"); empty if none.
	Field string
	// Reason says what is wrong, for humans.
	Reason string
	// Code is one of CodeBadJSON, CodeBadField, CodeTooLarge.
	Code string
	// Format is the format the payload was decoded as.
	Format Format
}

func (e *DecodeError) Error() string {
	var b strings.Builder
	if e.Index >= 0 {
		if e.Format == FormatSenML {
			b.WriteString("record ")
		} else {
			b.WriteString("reading ")
		}
		b.WriteString(strconv.Itoa(e.Index))
		b.WriteString(": ")
	}
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Reason)
	return b.String()
}

// ReasonCode returns the short reason code of a decode or validation error
// (CodeBadJSON, CodeWrongType, …), CodeBadPayload for any other error and ""
// for nil.
func ReasonCode(err error) string {
	if err == nil {
		return ""
	}
	var de *DecodeError
	if errors.As(err, &de) && de.Code != "" {
		return de.Code
	}
	var ve *ValidationError
	if errors.As(err, &ve) && ve.Code != "" {
		return ve.Code
	}
	return CodeBadPayload
}

// ValidateMetricName checks a metric name: 1 to 128 ASCII letters, digits,
// '_', '.', '-' and ':', starting with a letter or digit.
//
// Why this set: it is valid as a Prometheus label value and, in Prometheus 3,
// as a metric name (names outside [a-zA-Z_:][a-zA-Z0-9_:]* must be quoted in
// PromQL: {"temp.c"}); it needs no escaping as an InfluxDB field key, tag value
// or measurement in line protocol (no space, comma, '=' or quote), and the
// first-character rule keeps out InfluxDB's reserved "_" prefix. It is the
// SenML name set of RFC 8428 §4.5.1 without '/', which fieldhub leaves out so
// a name can be one path segment of the HTTP API.
func ValidateMetricName(name string) error {
	if msg := checkName(name); msg != "" {
		return fmt.Errorf("metric name %s", msg)
	}
	return nil
}

// checkName returns why name is not a valid metric name, or "".
func checkName[S string | []byte](name S) string {
	if len(name) == 0 {
		return "is empty"
	}
	if len(name) > MaxMetricNameLen {
		return fmt.Sprintf("is %d characters, more than %d", len(name), MaxMetricNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '_' || c == '.' || c == '-' || c == ':':
			if i == 0 {
				return fmt.Sprintf("starts with %q; it must start with a letter or digit", c)
			}
		case c >= utf8.RuneSelf:
			r, _ := utf8.DecodeRuneInString(string(name[i:min(i+utf8.UTFMax, len(name))]))
			return fmt.Sprintf("has %q at position %d; allowed are letters, digits, '_', '.', '-' and ':'", r, i)
		default:
			return fmt.Sprintf("has %q at position %d; allowed are letters, digits, '_', '.', '-' and ':'", c, i)
		}
	}
	return ""
}

// fieldPath joins prefix and a metric name for DecodeError.Field, quoting
// the name when it is not a valid one (it may hold anything a device sent).
func fieldPath[S string | []byte](prefix string, name S) string {
	n := string(name)
	if checkName(n) != "" {
		if len(n) > MaxMetricNameLen {
			n = n[:MaxMetricNameLen] + "…"
		}
		n = strconv.Quote(n)
	}
	if prefix == "" {
		return n
	}
	return prefix + "." + n
}

// Decode decodes a telemetry payload in either format. It is SenML when the
// payload is a JSON array whose first element has one of the SenML fields n,
// bn, v, vs, vb, vd, bt, bu, bv or bver (an array of fieldhub objects has ts,
// seq and metrics instead); fieldhub JSON otherwise. now (unix ms) is the
// time of readings that carry none. Errors are *DecodeError.
func Decode(payload []byte, now int64) ([]Reading, error) {
	if DetectFormat(payload) == FormatSenML {
		return DecodeSenML(payload, now)
	}
	return DecodeJSON(payload, now)
}

// DetectFormat tells which format Decode would use for payload. It looks at
// the field names of the first array element only.
func DetectFormat(payload []byte) Format {
	s := scanner{data: payload}
	if s.peek() != '[' {
		return FormatJSON
	}
	s.pos++
	if s.peek() != '{' {
		return FormatJSON
	}
	s.pos++
	var arr [16]byte // field names to match are short; keeps key off the heap
	key := arr[:0]
	for s.peek() == '"' {
		var err error
		if key, err = s.appendString(key[:0]); err != nil {
			return FormatJSON
		}
		switch string(key) {
		case "n", "bn", "v", "vs", "vb", "vd", "bt", "bu", "bv", "bver":
			return FormatSenML
		case "ts", "seq", "metrics":
			return FormatJSON
		}
		if s.peek() != ':' {
			return FormatJSON
		}
		s.pos++
		if s.skipValue(0) != nil || s.peek() != ',' {
			return FormatJSON
		}
		s.pos++
	}
	return FormatJSON
}

// span is a byte range of decoder.buf.
type span struct{ off, end int }

// pmetric is a decoded metric whose strings are still spans of decoder.buf.
type pmetric struct {
	name span
	kind Kind
	num  float64
	b    bool
	str  span
}

type preading struct {
	ts          int64
	seq         uint64
	hasSeq      bool
	first, last int // d.metrics[first:last]
}

// decoder holds the scratch state of one decode. Names and string values of
// the whole payload are gathered in buf and turned into one string at the
// end, so a decode allocates a handful of times however many metrics it has.
type decoder struct {
	s        scanner
	now      int64
	format   Format
	buf      []byte
	scratch  []byte
	bn       []byte // SenML: current base name
	n        []byte // SenML: current record's name
	metrics  []pmetric
	readings []preading
	recs     []senmlRecord
	order    []int32
}

// decoders recycles decoder scratch buffers between calls (ingest decodes
// on many goroutines); it holds no state that outlives a call.
var decoders = sync.Pool{New: func() any { return new(decoder) }}

func getDecoder(payload []byte, now int64, f Format) *decoder {
	d := decoders.Get().(*decoder)
	d.s = scanner{data: payload}
	d.now = now
	d.format = f
	d.buf = d.buf[:0]
	d.metrics = d.metrics[:0]
	d.readings = d.readings[:0]
	d.recs = d.recs[:0]
	return d
}

func putDecoder(d *decoder) {
	d.s = scanner{}
	// Don't keep the buffers of an exceptionally large payload alive.
	if cap(d.buf) > 1<<20 || cap(d.metrics) > 1<<14 || cap(d.recs) > 1<<14 {
		return
	}
	decoders.Put(d)
}

func (d *decoder) errorf(index int, field, code, format string, args ...any) *DecodeError {
	return &DecodeError{Index: index, Field: field, Code: code, Reason: fmt.Sprintf(format, args...), Format: d.format}
}

// at places a scanner error (which knows neither) at a reading and field.
func (d *decoder) at(err error, index int, field string) error {
	var de *DecodeError
	if errors.As(err, &de) {
		de.Format = d.format
		if de.Index < 0 {
			de.Index = index
		}
		if de.Field == "" {
			de.Field = field
		}
	}
	return err
}

func (d *decoder) bytes(sp span) []byte { return d.buf[sp.off:sp.end] }

// dupName finds two metrics of ms with the same name and returns their
// positions in ms, or -1, -1.
func (d *decoder) dupName(ms []pmetric) (int, int) {
	if len(ms) <= 32 {
		for i := 1; i < len(ms); i++ {
			ni := d.bytes(ms[i].name)
			for j := 0; j < i; j++ {
				if bytes.Equal(ni, d.bytes(ms[j].name)) {
					return j, i
				}
			}
		}
		return -1, -1
	}
	d.order = d.order[:0]
	for i := range ms {
		d.order = append(d.order, int32(i))
	}
	slices.SortFunc(d.order, func(a, b int32) int {
		if c := bytes.Compare(d.bytes(ms[a].name), d.bytes(ms[b].name)); c != 0 {
			return c
		}
		return int(a - b)
	})
	for k := 1; k < len(d.order); k++ {
		a, b := d.order[k-1], d.order[k]
		if bytes.Equal(d.bytes(ms[a].name), d.bytes(ms[b].name)) {
			return int(a), int(b)
		}
	}
	return -1, -1
}

// finish turns the parsed readings into the result: one allocation for the
// strings, one for the metrics, one for the readings.
func (d *decoder) finish() []Reading {
	str := string(d.buf)
	metrics := make([]Metric, len(d.metrics))
	for i, m := range d.metrics {
		metrics[i] = Metric{Name: str[m.name.off:m.name.end], Value: Value{Kind: m.kind, Num: m.num, Bool: m.b}}
		if m.kind == KindString {
			metrics[i].Value.Str = str[m.str.off:m.str.end]
		}
	}
	rs := make([]Reading, len(d.readings))
	for i, r := range d.readings {
		rs[i] = Reading{TS: r.ts, Seq: r.seq, HasSeq: r.hasSeq, Metrics: metrics[r.first:r.last:r.last]}
	}
	return rs
}

// ToSamples converts readings of one device to what the stores keep,
// appending to samples and events (pass nil, or slices to reuse): numbers as
// they are, booleans as 0 and 1, strings as events.
func ToSamples(device string, rs []Reading, samples []Sample, events []Event) ([]Sample, []Event) {
	for i := range rs {
		r := &rs[i]
		for _, m := range r.Metrics {
			if f, ok := m.Value.Float(); ok {
				samples = append(samples, Sample{Device: device, Metric: m.Name, TS: r.TS, Value: f})
			} else if m.Value.Kind == KindString {
				events = append(events, Event{Device: device, Metric: m.Name, TS: r.TS, Value: m.Value.Str})
			}
		}
	}
	return samples, events
}
