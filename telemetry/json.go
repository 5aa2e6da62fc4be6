package telemetry

import (
	"fmt"
	"math"
	"strconv"
	"time"
	"unicode/utf16"
	"unicode/utf8"
)

// DecodeJSON decodes a fieldhub JSON payload, a single reading or a batch:
//
//	{"ts": 1733300000123, "seq": 42, "metrics": {"temperature": 21.5, "door_open": false, "mode": "eco"}}
//
// or a JSON array of such objects. Rules:
//   - ts is optional: unix milliseconds as an integer JSON number, or an
//     RFC 3339 string ("2024-12-04T08:13:20.123Z"); absent, now (unix ms).
//     It must lie in [0, MaxTS].
//   - seq is optional: a non-negative integer that fits 64 bits.
//   - metrics is required: a non-empty object of at most MaxMetricsPerReading
//     metrics, each a finite number, a boolean or a string of at most
//     MaxStringValueLen bytes; null, objects and arrays are refused. Names
//     follow ValidateMetricName and appear once per reading.
//   - any other top-level field is refused, and so is a field given twice.
//   - a batch holds 1 to MaxReadingsPerBatch objects.
//
// Errors are *DecodeError. The decoder is a small hand-written scanner
// rather than encoding/json: unmarshalling into a struct with
// json.RawMessage or map[string]any costs about five allocations per metric
// (BenchmarkDecodeJSONStdlib), this costs three per payload.
func DecodeJSON(payload []byte, now int64) ([]Reading, error) {
	d := getDecoder(payload, now, FormatJSON)
	defer putDecoder(d)
	s := &d.s
	switch c := s.peek(); c {
	case '{':
		if err := d.jsonReading(-1); err != nil {
			return nil, err
		}
	case '[':
		s.pos++
		if s.peek() == ']' {
			return nil, d.errorf(-1, "", CodeBadField, "batch is an empty array; send at least one reading")
		}
		for i := 0; ; i++ {
			if i == MaxReadingsPerBatch {
				return nil, d.errorf(i, "", CodeTooLarge, "batch has more than %d readings", MaxReadingsPerBatch)
			}
			if c := s.peek(); c != '{' {
				if c == 0 || !isValueStart(c) {
					return nil, d.at(s.syntaxErr("expected an object"), i, "")
				}
				return nil, d.errorf(i, "", CodeBadField, "must be an object, got %s", kindName(c))
			}
			if err := d.jsonReading(i); err != nil {
				return nil, err
			}
			if !s.more(']') {
				if s.err != nil {
					return nil, d.at(s.err, i, "")
				}
				break
			}
		}
	case 0:
		return nil, d.errorf(-1, "", CodeBadJSON, "payload is empty")
	default:
		if !isValueStart(c) {
			return nil, d.at(s.syntaxErr("expected an object or an array"), -1, "")
		}
		return nil, d.errorf(-1, "", CodeBadField, "payload must be an object or an array of objects, got %s", kindName(c))
	}
	if s.peek() != 0 {
		return nil, d.at(s.syntaxErr("unexpected data after the JSON value"), -1, "")
	}
	return d.finish(), nil
}

// jsonReading decodes one reading object; s is at its '{'.
func (d *decoder) jsonReading(idx int) error {
	s := &d.s
	s.pos++
	r := preading{ts: d.now, first: len(d.metrics)}
	var haveTS, haveSeq, haveMetrics bool
	if s.peek() == '}' {
		s.pos++
		return d.errorf(idx, "metrics", CodeBadField, "is required")
	}
	for {
		if s.peek() != '"' {
			return d.at(s.syntaxErr("expected a field name"), idx, "")
		}
		var err error
		if d.scratch, err = s.appendString(d.scratch[:0]); err != nil {
			return d.at(err, idx, "")
		}
		if err := s.colon(); err != nil {
			return d.at(err, idx, "")
		}
		switch string(d.scratch) {
		case "ts":
			if haveTS {
				return d.errorf(idx, "ts", CodeBadField, "given twice")
			}
			haveTS = true
			if r.ts, err = d.jsonTS(); err != nil {
				return d.at(err, idx, "ts")
			}
		case "seq":
			if haveSeq {
				return d.errorf(idx, "seq", CodeBadField, "given twice")
			}
			haveSeq = true
			if r.seq, err = d.jsonSeq(); err != nil {
				return d.at(err, idx, "seq")
			}
			r.hasSeq = true
		case "metrics":
			if haveMetrics {
				return d.errorf(idx, "metrics", CodeBadField, "given twice")
			}
			haveMetrics = true
			if err := d.jsonMetrics(idx); err != nil {
				return err
			}
		default:
			return d.errorf(idx, fieldPath("", d.scratch), CodeBadField, "unknown field; allowed are ts, seq and metrics")
		}
		if !s.more('}') {
			if s.err != nil {
				return d.at(s.err, idx, "")
			}
			break
		}
	}
	if !haveMetrics {
		return d.errorf(idx, "metrics", CodeBadField, "is required")
	}
	r.last = len(d.metrics)
	if i, j := d.dupName(d.metrics[r.first:r.last]); i >= 0 {
		name := d.bytes(d.metrics[r.first+j].name)
		return d.errorf(idx, fieldPath("metrics", name), CodeBadField, "given twice")
	}
	d.readings = append(d.readings, r)
	return nil
}

func (d *decoder) jsonTS() (int64, error) {
	s := &d.s
	switch c := s.peek(); {
	case c == '-' || (c >= '0' && c <= '9'):
		num, err := s.number()
		if err != nil {
			return 0, err
		}
		ts, err := strconv.ParseInt(string(num), 10, 64)
		if err != nil || ts < 0 || ts > MaxTS {
			return 0, &DecodeError{Index: -1, Code: CodeBadField, Reason: fmt.Sprintf("%s is not an integer number of unix milliseconds in [0, %d]", num, int64(MaxTS))}
		}
		return ts, nil
	case c == '"':
		var err error
		if d.scratch, err = s.appendString(d.scratch[:0]); err != nil {
			return 0, err
		}
		t, err := time.Parse(time.RFC3339Nano, string(d.scratch))
		if err != nil {
			return 0, &DecodeError{Index: -1, Code: CodeBadField, Reason: fmt.Sprintf("%s is not an RFC 3339 time such as \"2024-12-04T08:13:20.123Z\"", strconv.Quote(truncate(string(d.scratch), 64)))}
		}
		ts := t.UnixMilli()
		if ts < 0 || ts > MaxTS {
			return 0, &DecodeError{Index: -1, Code: CodeBadField, Reason: fmt.Sprintf("%s is outside 1970-01-01 to 9999-12-31", strconv.Quote(string(d.scratch)))}
		}
		return ts, nil
	default:
		if !isValueStart(c) {
			return 0, s.syntaxErr("expected a value")
		}
		return 0, &DecodeError{Index: -1, Code: CodeBadField, Reason: "must be unix milliseconds (integer) or an RFC 3339 string, got " + kindName(c)}
	}
}

func (d *decoder) jsonSeq() (uint64, error) {
	s := &d.s
	c := s.peek()
	if c != '-' && (c < '0' || c > '9') {
		if !isValueStart(c) {
			return 0, s.syntaxErr("expected a value")
		}
		return 0, &DecodeError{Index: -1, Code: CodeBadField, Reason: "must be a non-negative integer, got " + kindName(c)}
	}
	num, err := s.number()
	if err != nil {
		return 0, err
	}
	seq, err := strconv.ParseUint(string(num), 10, 64)
	if err != nil {
		return 0, &DecodeError{Index: -1, Code: CodeBadField, Reason: fmt.Sprintf("%s is not an integer in [0, %d]", num, uint64(math.MaxUint64))}
	}
	return seq, nil
}

// jsonMetrics decodes the metrics object of reading idx.
func (d *decoder) jsonMetrics(idx int) error {
	s := &d.s
	c := s.peek()
	if c != '{' {
		if !isValueStart(c) {
			return d.at(s.syntaxErr("expected a value"), idx, "metrics")
		}
		return d.errorf(idx, "metrics", CodeBadField, "must be an object, got %s", kindName(c))
	}
	s.pos++
	if s.peek() == '}' {
		s.pos++
		return d.errorf(idx, "metrics", CodeBadField, "is empty; send at least one metric")
	}
	for n := 0; ; n++ {
		if n == MaxMetricsPerReading {
			return d.errorf(idx, "metrics", CodeTooLarge, "has more than %d metrics", MaxMetricsPerReading)
		}
		if s.peek() != '"' {
			return d.at(s.syntaxErr("expected a metric name"), idx, "metrics")
		}
		m := pmetric{name: span{off: len(d.buf)}}
		var err error
		if d.buf, err = s.appendString(d.buf); err != nil {
			return d.at(err, idx, "metrics")
		}
		m.name.end = len(d.buf)
		name := d.bytes(m.name)
		if msg := checkName(name); msg != "" {
			return d.errorf(idx, fieldPath("metrics", name), CodeBadField, "metric name %s", msg)
		}
		if err := s.colon(); err != nil {
			return d.at(err, idx, fieldPath("metrics", name))
		}
		if err := d.value(&m, false); err != nil {
			return d.at(err, idx, fieldPath("metrics", d.bytes(m.name)))
		}
		d.metrics = append(d.metrics, m)
		if !s.more('}') {
			if s.err != nil {
				return d.at(s.err, idx, "metrics")
			}
			return nil
		}
	}
}

// value decodes a metric value (number, bool or string) into m. With
// numOnly it accepts numbers only (SenML "v").
func (d *decoder) value(m *pmetric, numOnly bool) error {
	s := &d.s
	c := s.peek()
	want := "must be a number, bool or string, got "
	if numOnly {
		want = "must be a number, got "
	}
	switch {
	case c == '-' || (c >= '0' && c <= '9'):
		f, err := s.float()
		if err != nil {
			return err
		}
		m.kind, m.num = KindNumber, f
		return nil
	case numOnly:
		if !isValueStart(c) {
			return s.syntaxErr("expected a value")
		}
		if err := s.skipValue(0); err != nil {
			return err
		}
		return &DecodeError{Index: -1, Code: CodeBadField, Reason: want + kindName(c)}
	case c == 't' || c == 'f':
		b, err := s.boolean()
		if err != nil {
			return err
		}
		m.kind, m.b = KindBool, b
		return nil
	case c == '"':
		return d.str(m)
	case c == 'n':
		if err := s.literal("null"); err != nil {
			return err
		}
		return &DecodeError{Index: -1, Code: CodeBadField, Reason: want + "null"}
	case c == '{' || c == '[':
		return &DecodeError{Index: -1, Code: CodeBadField, Reason: want + kindName(c)}
	}
	return s.syntaxErr("expected a value")
}

// str decodes a string value into m, bounded by MaxStringValueLen.
func (d *decoder) str(m *pmetric) error {
	m.kind = KindString
	m.str.off = len(d.buf)
	var err error
	if d.buf, err = d.s.appendString(d.buf); err != nil {
		return err
	}
	m.str.end = len(d.buf)
	if n := m.str.end - m.str.off; n > MaxStringValueLen {
		return &DecodeError{Index: -1, Code: CodeTooLarge, Reason: fmt.Sprintf("string is %d bytes, more than %d", n, MaxStringValueLen)}
	}
	return nil
}

// AppendJSON appends rs encoded as fieldhub JSON to dst: a single object for
// one reading, an array otherwise. ts is always written (unix ms), seq when
// HasSeq. The output decodes back to rs.
func AppendJSON(dst []byte, rs []Reading) []byte {
	if len(rs) != 1 {
		dst = append(dst, '[')
	}
	for i := range rs {
		if i > 0 {
			dst = append(dst, ',')
		}
		r := &rs[i]
		dst = append(dst, `{"ts":`...)
		dst = strconv.AppendInt(dst, r.TS, 10)
		if r.HasSeq {
			dst = append(dst, `,"seq":`...)
			dst = strconv.AppendUint(dst, r.Seq, 10)
		}
		dst = append(dst, `,"metrics":{`...)
		for j, m := range r.Metrics {
			if j > 0 {
				dst = append(dst, ',')
			}
			dst = appendJSONString(dst, m.Name)
			dst = append(dst, ':')
			switch m.Value.Kind {
			case KindNumber:
				dst = strconv.AppendFloat(dst, m.Value.Num, 'g', -1, 64)
			case KindBool:
				dst = strconv.AppendBool(dst, m.Value.Bool)
			case KindString:
				dst = appendJSONString(dst, m.Value.Str)
			default:
				dst = append(dst, "null"...)
			}
		}
		dst = append(dst, "}}"...)
	}
	if len(rs) != 1 {
		dst = append(dst, ']')
	}
	return dst
}

func appendJSONString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			dst = append(dst, '\\', c)
			i++
		case c < 0x20:
			dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			i++
		case c < utf8.RuneSelf:
			dst = append(dst, c)
			i++
		default:
			r, size := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && size == 1 {
				dst = append(dst, `\ufffd`...)
			} else {
				dst = append(dst, s[i:i+size]...)
			}
			i += size
		}
	}
	return append(dst, '"')
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// scanner is a minimal JSON tokenizer over a byte slice. Its errors are
// *DecodeError with Code CodeBadJSON and Index -1; callers place them.
type scanner struct {
	data []byte
	pos  int
	err  error // set by more() on a syntax error
}

// peek skips white space and returns the next byte without consuming it,
// 0 at the end of the input.
func (s *scanner) peek() byte {
	for s.pos < len(s.data) {
		switch c := s.data[s.pos]; c {
		case ' ', '\t', '\n', '\r':
			s.pos++
		default:
			return c
		}
	}
	return 0
}

// syntaxErr reports what was expected at s.pos.
func (s *scanner) syntaxErr(what string) *DecodeError {
	got := "end of input"
	if s.pos < len(s.data) {
		got = strconv.QuoteRune(rune(s.data[s.pos]))
		if s.data[s.pos] >= utf8.RuneSelf {
			got = fmt.Sprintf("byte 0x%02x", s.data[s.pos])
		}
	}
	return &DecodeError{Index: -1, Code: CodeBadJSON, Reason: fmt.Sprintf("invalid JSON at offset %d: %s, got %s", s.pos, what, got)}
}

func (s *scanner) colon() error {
	if s.peek() != ':' {
		return s.syntaxErr("expected ':'")
	}
	s.pos++
	return nil
}

// more consumes the ',' or the closing byte after a member or element and
// reports whether another one follows. On anything else it sets s.err.
func (s *scanner) more(closing byte) bool {
	switch s.peek() {
	case ',':
		s.pos++
		return true
	case closing:
		s.pos++
		return false
	}
	s.err = s.syntaxErr(fmt.Sprintf("expected ',' or '%c'", closing))
	return false
}

func isValueStart(c byte) bool {
	switch c {
	case '{', '[', '"', 't', 'f', 'n', '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		return true
	}
	return false
}

// kindName names the JSON type of the value starting with c.
func kindName(c byte) string {
	switch c {
	case '{':
		return "object"
	case '[':
		return "array"
	case '"':
		return "string"
	case 't', 'f':
		return "bool"
	case 'n':
		return "null"
	}
	return "number"
}

// appendString consumes a JSON string and appends its unescaped content to
// dst. It refuses control characters and invalid UTF-8; lone UTF-16
// surrogates in \u escapes become U+FFFD, as with encoding/json.
func (s *scanner) appendString(dst []byte) ([]byte, error) {
	start := s.pos + 1 // s.data[s.pos] is '"'
	i := start
	for i < len(s.data) {
		c := s.data[i]
		if c == '"' {
			s.pos = i + 1
			return append(dst, s.data[start:i]...), nil
		}
		if c == '\\' || c < 0x20 || c >= utf8.RuneSelf {
			break
		}
		i++
	}
	dst = append(dst, s.data[start:i]...)
	for i < len(s.data) {
		c := s.data[i]
		switch {
		case c == '"':
			s.pos = i + 1
			return dst, nil
		case c == '\\':
			if i+1 >= len(s.data) {
				s.pos = len(s.data)
				return dst, s.syntaxErr("unterminated string")
			}
			switch e := s.data[i+1]; e {
			case '"', '\\', '/':
				dst = append(dst, e)
			case 'b':
				dst = append(dst, '\b')
			case 'f':
				dst = append(dst, '\f')
			case 'n':
				dst = append(dst, '\n')
			case 'r':
				dst = append(dst, '\r')
			case 't':
				dst = append(dst, '\t')
			case 'u':
				r, ok := hex4(s.data[i+2:])
				if !ok {
					s.pos = i
					return dst, s.syntaxErr("invalid \\u escape")
				}
				i += 6
				if utf16.IsSurrogate(r) {
					r2 := rune(-1)
					if i+1 < len(s.data) && s.data[i] == '\\' && s.data[i+1] == 'u' {
						if v, ok := hex4(s.data[i+2:]); ok {
							r2 = v
						}
					}
					if dec := utf16.DecodeRune(r, r2); dec != utf8.RuneError {
						r = dec
						i += 6
					} else {
						r = utf8.RuneError
					}
				}
				dst = utf8.AppendRune(dst, r)
				continue
			default:
				s.pos = i
				return dst, s.syntaxErr("invalid escape in string")
			}
			i += 2
		case c < 0x20:
			s.pos = i
			return dst, s.syntaxErr("control character in string")
		case c < utf8.RuneSelf:
			dst = append(dst, c)
			i++
		default:
			r, size := utf8.DecodeRune(s.data[i:])
			if r == utf8.RuneError && size == 1 {
				s.pos = i
				return dst, s.syntaxErr("invalid UTF-8 in string")
			}
			dst = append(dst, s.data[i:i+size]...)
			i += size
		}
	}
	s.pos = len(s.data)
	return dst, s.syntaxErr("unterminated string")
}

func hex4(b []byte) (rune, bool) {
	if len(b) < 4 {
		return 0, false
	}
	var r rune
	for _, c := range b[:4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			c = c - 'A' + 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

// number consumes a JSON number and returns its text, checked against the
// JSON grammar: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (s *scanner) number() ([]byte, error) {
	start, i := s.pos, s.pos
	d := s.data
	if i < len(d) && d[i] == '-' {
		i++
	}
	switch {
	case i < len(d) && d[i] == '0':
		i++
	case i < len(d) && d[i] >= '1' && d[i] <= '9':
		for i < len(d) && d[i] >= '0' && d[i] <= '9' {
			i++
		}
	default:
		s.pos = i
		return nil, s.syntaxErr("expected a digit")
	}
	if i < len(d) && d[i] == '.' {
		i++
		if i >= len(d) || d[i] < '0' || d[i] > '9' {
			s.pos = i
			return nil, s.syntaxErr("expected a digit after '.'")
		}
		for i < len(d) && d[i] >= '0' && d[i] <= '9' {
			i++
		}
	}
	if i < len(d) && (d[i] == 'e' || d[i] == 'E') {
		i++
		if i < len(d) && (d[i] == '+' || d[i] == '-') {
			i++
		}
		if i >= len(d) || d[i] < '0' || d[i] > '9' {
			s.pos = i
			return nil, s.syntaxErr("expected a digit in the exponent")
		}
		for i < len(d) && d[i] >= '0' && d[i] <= '9' {
			i++
		}
	}
	s.pos = i
	return d[start:i], nil
}

// float consumes a JSON number that must be a finite float64.
func (s *scanner) float() (float64, error) {
	num, err := s.number()
	if err != nil {
		return 0, err
	}
	f, err := strconv.ParseFloat(string(num), 64)
	if err != nil && (math.IsInf(f, 0) || math.IsNaN(f)) {
		return 0, &DecodeError{Index: -1, Code: CodeBadField, Reason: fmt.Sprintf("number %s is out of range; it must be finite", truncate(string(num), 40))}
	}
	return f, nil
}

func (s *scanner) boolean() (bool, error) {
	if s.data[s.pos] == 't' {
		return true, s.literal("true")
	}
	return false, s.literal("false")
}

func (s *scanner) literal(lit string) error {
	if len(s.data)-s.pos < len(lit) || string(s.data[s.pos:s.pos+len(lit)]) != lit {
		return s.syntaxErr("expected " + lit)
	}
	s.pos += len(lit)
	return nil
}

// skipString consumes a JSON string without keeping it.
func (s *scanner) skipString() error {
	for i := s.pos + 1; i < len(s.data); i++ {
		switch c := s.data[i]; {
		case c == '"':
			s.pos = i + 1
			return nil
		case c == '\\' || c < 0x20 || c >= utf8.RuneSelf:
			// Rare: let the full decoder check escapes and UTF-8.
			var tmp [64]byte
			_, err := s.appendString(tmp[:0])
			return err
		}
	}
	s.pos = len(s.data)
	return s.syntaxErr("unterminated string")
}

// skipValue consumes any JSON value, nested at most maxDepth deep.
func (s *scanner) skipValue(depth int) error {
	if depth >= maxDepth {
		return &DecodeError{Index: -1, Code: CodeTooLarge, Reason: fmt.Sprintf("values nested more than %d deep", maxDepth)}
	}
	switch c := s.peek(); c {
	case '{', '[':
		closing := byte('}')
		if c == '[' {
			closing = ']'
		}
		s.pos++
		if s.peek() == closing {
			s.pos++
			return nil
		}
		for {
			if c == '{' {
				if s.peek() != '"' {
					return s.syntaxErr("expected a field name")
				}
				if err := s.skipString(); err != nil {
					return err
				}
				if err := s.colon(); err != nil {
					return err
				}
			}
			if err := s.skipValue(depth + 1); err != nil {
				return err
			}
			if !s.more(closing) {
				return s.err
			}
		}
	case '"':
		return s.skipString()
	case 't':
		return s.literal("true")
	case 'f':
		return s.literal("false")
	case 'n':
		return s.literal("null")
	default:
		_, err := s.number()
		return err
	}
}
