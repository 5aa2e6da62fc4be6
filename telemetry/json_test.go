package telemetry

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

const testNow = int64(1733300000000)

func num(name string, v float64) Metric {
	return Metric{Name: name, Value: Value{Kind: KindNumber, Num: v}}
}
func boolm(name string, v bool) Metric {
	return Metric{Name: name, Value: Value{Kind: KindBool, Bool: v}}
}
func strm(name string, v string) Metric {
	return Metric{Name: name, Value: Value{Kind: KindString, Str: v}}
}
func reading(ts int64, ms ...Metric) Reading { return Reading{TS: ts, Metrics: ms} }

func TestDecodeJSON(t *testing.T) {
	tests := []struct {
		name    string
		payload string
		want    []Reading
	}{
		{"contract example", `{"ts": 1733300000123, "seq": 42, "metrics": {"temperature": 21.5, "door_open": false, "mode": "eco"}}`,
			[]Reading{{TS: 1733300000123, Seq: 42, HasSeq: true, Metrics: []Metric{num("temperature", 21.5), boolm("door_open", false), strm("mode", "eco")}}}},
		{"ts absent is now", `{"metrics":{"a":1}}`, []Reading{reading(testNow, num("a", 1))}},
		{"ts RFC 3339 UTC", `{"ts":"2024-12-04T08:13:20.123Z","metrics":{"a":1}}`, []Reading{reading(1733300000123, num("a", 1))}},
		{"ts RFC 3339 offset, no fraction", `{"ts":"2024-12-04T09:13:20+01:00","metrics":{"a":1}}`, []Reading{reading(1733300000000, num("a", 1))}},
		{"ts RFC 3339 sub-ms truncated", `{"ts":"2024-12-04T08:13:20.123999Z","metrics":{"a":1}}`, []Reading{reading(1733300000123, num("a", 1))}},
		{"ts zero", `{"ts":0,"metrics":{"a":1}}`, []Reading{reading(0, num("a", 1))}},
		{"ts max", `{"ts":253402300799999,"metrics":{"a":1}}`, []Reading{reading(MaxTS, num("a", 1))}},
		{"seq zero", `{"seq":0,"metrics":{"a":1}}`, []Reading{{TS: testNow, HasSeq: true, Metrics: []Metric{num("a", 1)}}}},
		{"seq max uint64", `{"seq":18446744073709551615,"metrics":{"a":1}}`, []Reading{{TS: testNow, Seq: 1<<64 - 1, HasSeq: true, Metrics: []Metric{num("a", 1)}}}},
		{"field order free", `{"metrics":{"a":1},"ts":5}`, []Reading{reading(5, num("a", 1))}},
		{"numbers", `{"metrics":{"i":-3,"f":0.25,"e":1e3,"E":-2.5E-3,"z":-0,"big":1.7976931348623157e308,"tiny":1e-400}}`,
			[]Reading{reading(testNow, num("i", -3), num("f", 0.25), num("e", 1000), num("E", -0.0025), num("z", 0), num("big", 1.7976931348623157e308), num("tiny", 0))}},
		{"bools", `{"metrics":{"t":true,"f":false}}`, []Reading{reading(testNow, boolm("t", true), boolm("f", false))}},
		{"string escapes", `{"metrics":{"s":"a\"b\\c\/d\b\f\n\r\t\u00e9\ud83d\ude00","u":"ünïcødé"}}`,
			[]Reading{reading(testNow, strm("s", "a\"b\\c/d\b\f\n\r\té😀"), strm("u", "ünïcødé"))}},
		{"lone surrogate becomes U+FFFD", `{"metrics":{"s":"\ud800x"}}`, []Reading{reading(testNow, strm("s", "\ufffdx"))}},
		{"escaped name", `{"metrics":{"temp\u0065rature":1}}`, []Reading{reading(testNow, num("temperature", 1))}},
		{"empty string value", `{"metrics":{"s":""}}`, []Reading{reading(testNow, strm("s", ""))}},
		{"name charset", `{"metrics":{"a1_.-:Z":1,"9lives":2}}`, []Reading{reading(testNow, num("a1_.-:Z", 1), num("9lives", 2))}},
		{"white space everywhere", " \n\t{ \"ts\" : 1 , \"metrics\" : { \"a\" : 1 } } \r\n", []Reading{reading(1, num("a", 1))}},
		{"batch", `[{"ts":1,"metrics":{"a":1}},{"ts":2,"seq":7,"metrics":{"a":2,"b":"x"}}]`,
			[]Reading{reading(1, num("a", 1)), {TS: 2, Seq: 7, HasSeq: true, Metrics: []Metric{num("a", 2), strm("b", "x")}}}},
		{"batch keeps order", `[{"ts":9,"metrics":{"a":1}},{"ts":3,"metrics":{"a":2}}]`, []Reading{reading(9, num("a", 1)), reading(3, num("a", 2))}},
		{"same name in two readings", `[{"metrics":{"a":1}},{"metrics":{"a":2}}]`, []Reading{reading(testNow, num("a", 1)), reading(testNow, num("a", 2))}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, dec := range []struct {
				name string
				f    func([]byte, int64) ([]Reading, error)
			}{{"DecodeJSON", DecodeJSON}, {"Decode", Decode}} {
				got, err := dec.f([]byte(tt.payload), testNow)
				if err != nil {
					t.Fatalf("%s: %v", dec.name, err)
				}
				if !reflect.DeepEqual(got, tt.want) {
					t.Fatalf("%s:\n got %+v\nwant %+v", dec.name, got, tt.want)
				}
			}
		})
	}
}

func TestDecodeJSONErrors(t *testing.T) {
	long := strings.Repeat("a", 129)
	tests := []struct {
		name    string
		payload string
		want    string // Error()
		code    string
		index   int
		field   string
	}{
		{"empty payload", ``, "payload is empty", CodeBadJSON, -1, ""},
		{"blank payload", "  \n", "payload is empty", CodeBadJSON, -1, ""},
		{"not JSON", `hello`, "invalid JSON at offset 0: expected an object or an array, got 'h'", CodeBadJSON, -1, ""},
		{"scalar payload", `42`, "payload must be an object or an array of objects, got number", CodeBadField, -1, ""},
		{"trailing data", `{"metrics":{"a":1}} {}`, "invalid JSON at offset 20: unexpected data after the JSON value, got '{'", CodeBadJSON, -1, ""},
		{"truncated", `{"metrics":{"a":1`, "metrics: invalid JSON at offset 17: expected ',' or '}', got end of input", CodeBadJSON, -1, "metrics"},
		{"unterminated string", `{"metrics":{"a":"x`, `metrics.a: invalid JSON at offset 18: unterminated string, got end of input`, CodeBadJSON, -1, "metrics.a"},
		{"missing colon", `{"metrics" {"a":1}}`, "invalid JSON at offset 11: expected ':', got '{'", CodeBadJSON, -1, ""},
		{"bad literal", `{"metrics":{"a":tru}}`, "metrics.a: invalid JSON at offset 16: expected true, got 't'", CodeBadJSON, -1, "metrics.a"},
		{"bad number", `{"metrics":{"a":01}}`, "metrics: invalid JSON at offset 17: expected ',' or '}', got '1'", CodeBadJSON, -1, "metrics"},
		{"bad number dot", `{"metrics":{"a":1.}}`, "metrics.a: invalid JSON at offset 18: expected a digit after '.', got '}'", CodeBadJSON, -1, "metrics.a"},
		{"plus number", `{"metrics":{"a":+1}}`, "metrics.a: invalid JSON at offset 16: expected a value, got '+'", CodeBadJSON, -1, "metrics.a"},
		{"NaN literal", `{"metrics":{"a":NaN}}`, "metrics.a: invalid JSON at offset 16: expected a value, got 'N'", CodeBadJSON, -1, "metrics.a"},
		{"control char in string", "{\"metrics\":{\"a\":\"x\ny\"}}", `metrics.a: invalid JSON at offset 18: control character in string, got '\n'`, CodeBadJSON, -1, "metrics.a"},
		{"invalid UTF-8", "{\"metrics\":{\"a\":\"x\xffy\"}}", "metrics.a: invalid JSON at offset 18: invalid UTF-8 in string, got byte 0xff", CodeBadJSON, -1, "metrics.a"},
		{"bad escape", `{"metrics":{"a":"\x"}}`, `metrics.a: invalid JSON at offset 17: invalid escape in string, got '\\'`, CodeBadJSON, -1, "metrics.a"},
		{"bad unicode escape", `{"metrics":{"a":"\u12g4"}}`, `metrics.a: invalid JSON at offset 17: invalid \u escape, got '\\'`, CodeBadJSON, -1, "metrics.a"},
		{"trailing comma", `{"metrics":{"a":1,}}`, "metrics: invalid JSON at offset 18: expected a metric name, got '}'", CodeBadJSON, -1, "metrics"},

		{"empty object", `{}`, "metrics: is required", CodeBadField, -1, "metrics"},
		{"metrics missing", `{"ts":1}`, "metrics: is required", CodeBadField, -1, "metrics"},
		{"metrics empty", `{"metrics":{}}`, "metrics: is empty; send at least one metric", CodeBadField, -1, "metrics"},
		{"metrics array", `{"metrics":[1]}`, "metrics: must be an object, got array", CodeBadField, -1, "metrics"},
		{"metrics null", `{"metrics":null}`, "metrics: must be an object, got null", CodeBadField, -1, "metrics"},
		{"null value", `{"metrics":{"a":null}}`, "metrics.a: must be a number, bool or string, got null", CodeBadField, -1, "metrics.a"},
		{"object value", `{"metrics":{"temperature":{"v":1}}}`, "metrics.temperature: must be a number, bool or string, got object", CodeBadField, -1, "metrics.temperature"},
		{"array value", `{"metrics":{"a":[1]}}`, "metrics.a: must be a number, bool or string, got array", CodeBadField, -1, "metrics.a"},
		{"infinite number", `{"metrics":{"a":-1e400}}`, "metrics.a: number -1e400 is out of range; it must be finite", CodeBadField, -1, "metrics.a"},
		{"unknown field", `{"metrics":{"a":1},"temperature":3}`, "temperature: unknown field; allowed are ts, seq and metrics", CodeBadField, -1, "temperature"},
		{"unknown odd field", `{"metrics":{"a":1},"a b":3}`, `"a b": unknown field; allowed are ts, seq and metrics`, CodeBadField, -1, `"a b"`},
		{"ts twice", `{"ts":1,"ts":2,"metrics":{"a":1}}`, "ts: given twice", CodeBadField, -1, "ts"},
		{"seq twice", `{"seq":1,"seq":2,"metrics":{"a":1}}`, "seq: given twice", CodeBadField, -1, "seq"},
		{"metrics twice", `{"metrics":{"a":1},"metrics":{"b":1}}`, "metrics: given twice", CodeBadField, -1, "metrics"},
		{"duplicate metric", `{"metrics":{"a":1,"b":2,"a":3}}`, "metrics.a: given twice", CodeBadField, -1, "metrics.a"},
		{"ts float", `{"ts":1733300000123.5,"metrics":{"a":1}}`, "ts: 1733300000123.5 is not an integer number of unix milliseconds in [0, 253402300799999]", CodeBadField, -1, "ts"},
		{"ts exponent", `{"ts":1.7e12,"metrics":{"a":1}}`, "ts: 1.7e12 is not an integer number of unix milliseconds in [0, 253402300799999]", CodeBadField, -1, "ts"},
		{"ts negative", `{"ts":-1,"metrics":{"a":1}}`, "ts: -1 is not an integer number of unix milliseconds in [0, 253402300799999]", CodeBadField, -1, "ts"},
		{"ts too large", `{"ts":253402300800000,"metrics":{"a":1}}`, "ts: 253402300800000 is not an integer number of unix milliseconds in [0, 253402300799999]", CodeBadField, -1, "ts"},
		{"ts bad string", `{"ts":"yesterday","metrics":{"a":1}}`, `ts: "yesterday" is not an RFC 3339 time such as "2024-12-04T08:13:20.123Z"`, CodeBadField, -1, "ts"},
		{"ts before 1970", `{"ts":"1969-12-31T23:59:59Z","metrics":{"a":1}}`, `ts: "1969-12-31T23:59:59Z" is outside 1970-01-01 to 9999-12-31`, CodeBadField, -1, "ts"},
		{"ts bool", `{"ts":true,"metrics":{"a":1}}`, "ts: must be unix milliseconds (integer) or an RFC 3339 string, got bool", CodeBadField, -1, "ts"},
		{"seq negative", `{"seq":-1,"metrics":{"a":1}}`, "seq: -1 is not an integer in [0, 18446744073709551615]", CodeBadField, -1, "seq"},
		{"seq float", `{"seq":1.5,"metrics":{"a":1}}`, "seq: 1.5 is not an integer in [0, 18446744073709551615]", CodeBadField, -1, "seq"},
		{"seq overflow", `{"seq":18446744073709551616,"metrics":{"a":1}}`, "seq: 18446744073709551616 is not an integer in [0, 18446744073709551615]", CodeBadField, -1, "seq"},
		{"seq string", `{"seq":"1","metrics":{"a":1}}`, "seq: must be a non-negative integer, got string", CodeBadField, -1, "seq"},
		{"name empty", `{"metrics":{"":1}}`, `metrics."": metric name is empty`, CodeBadField, -1, `metrics.""`},
		{"name space", `{"metrics":{"door open":1}}`, `metrics."door open": metric name has ' ' at position 4; allowed are letters, digits, '_', '.', '-' and ':'`, CodeBadField, -1, `metrics."door open"`},
		{"name slash", `{"metrics":{"a/b":1}}`, `metrics."a/b": metric name has '/' at position 1; allowed are letters, digits, '_', '.', '-' and ':'`, CodeBadField, -1, `metrics."a/b"`},
		{"name leading underscore", `{"metrics":{"_a":1}}`, `metrics."_a": metric name starts with '_'; it must start with a letter or digit`, CodeBadField, -1, `metrics."_a"`},
		{"name unicode", `{"metrics":{"température":1}}`, `metrics."température": metric name has 'é' at position 4; allowed are letters, digits, '_', '.', '-' and ':'`, CodeBadField, -1, `metrics."température"`},
		{"name too long", `{"metrics":{"` + long + `":1}}`, `metrics."` + long[:128] + `…": metric name is 129 characters, more than 128`, CodeBadField, -1, `metrics."` + long[:128] + `…"`},
		{"string too long", `{"metrics":{"s":"` + strings.Repeat("x", MaxStringValueLen+1) + `"}}`, "metrics.s: string is 4097 bytes, more than 4096", CodeTooLarge, -1, "metrics.s"},

		{"empty batch", `[]`, "batch is an empty array; send at least one reading", CodeBadField, -1, ""},
		{"batch element not object", `[{"metrics":{"a":1}},3]`, "reading 1: must be an object, got number", CodeBadField, 1, ""},
		{"batch error index", `[{"metrics":{"a":1}},{"metrics":{"a":1}},{"metrics":{"a":1}},{"metrics":{"temperature":{}}}]`, "reading 3: metrics.temperature: must be a number, bool or string, got object", CodeBadField, 3, "metrics.temperature"},
		{"batch unknown field", `[{"metrics":{"a":1}},{"metrics":{"a":1},"x":1}]`, "reading 1: x: unknown field; allowed are ts, seq and metrics", CodeBadField, 1, "x"},
		{"batch syntax", `[{"metrics":{"a":1}} {"metrics":{"a":1}}]`, "reading 0: invalid JSON at offset 21: expected ',' or ']', got '{'", CodeBadJSON, 0, ""},
		{"batch trailing comma", `[{"metrics":{"a":1}},]`, "reading 1: invalid JSON at offset 21: expected an object, got ']'", CodeBadJSON, 1, ""},
		{"nested batch", `[[{"metrics":{"a":1}}]]`, "reading 0: must be an object, got array", CodeBadField, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs, err := DecodeJSON([]byte(tt.payload), testNow)
			if err == nil {
				t.Fatalf("no error, got %+v", rs)
			}
			checkDecodeError(t, err, tt.want, tt.code, tt.index, tt.field, FormatJSON)
		})
	}
}

func checkDecodeError(t *testing.T, err error, want, code string, index int, field string, f Format) {
	t.Helper()
	var de *DecodeError
	if !errors.As(err, &de) {
		t.Fatalf("error %T %v is not a *DecodeError", err, err)
	}
	if err.Error() != want {
		t.Errorf("Error():\n got %s\nwant %s", err.Error(), want)
	}
	if de.Code != code || de.Index != index || de.Field != field || de.Format != f {
		t.Errorf("got Code %q Index %d Field %q Format %v, want %q %d %q %v", de.Code, de.Index, de.Field, de.Format, code, index, field, f)
	}
	if ReasonCode(err) != code {
		t.Errorf("ReasonCode = %q, want %q", ReasonCode(err), code)
	}
}

func TestDecodeJSONLimits(t *testing.T) {
	var b strings.Builder
	b.WriteString(`{"metrics":{`)
	for i := range MaxMetricsPerReading + 1 {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`"m`)
		b.WriteString(strings.Repeat("x", i%7))
		b.WriteString(itoa(i))
		b.WriteString(`":1`)
	}
	b.WriteString(`}}`)
	_, err := DecodeJSON([]byte(b.String()), testNow)
	checkDecodeError(t, err, "metrics: has more than 1000 metrics", CodeTooLarge, -1, "metrics", FormatJSON)

	// Exactly the limit is fine, and the duplicate check works on large readings.
	payload := strings.Replace(b.String(), `,"m`+strings.Repeat("x", MaxMetricsPerReading%7)+itoa(MaxMetricsPerReading)+`":1`, "", 1)
	rs, err := DecodeJSON([]byte(payload), testNow)
	if err != nil || len(rs[0].Metrics) != MaxMetricsPerReading {
		t.Fatalf("at the limit: %v", err)
	}
	// Metric i is named "m" + "x"*(i%7) + i: rename metric 1 to metric 999.
	dup := strings.Replace(payload, `"mx1":1`, `"mxxxxx999":1`, 1)
	_, err = DecodeJSON([]byte(dup), testNow)
	checkDecodeError(t, err, "metrics.mxxxxx999: given twice", CodeBadField, -1, "metrics.mxxxxx999", FormatJSON)

	b.Reset()
	b.WriteByte('[')
	for i := range MaxReadingsPerBatch + 1 {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`{"metrics":{"a":1}}`)
	}
	b.WriteByte(']')
	_, err = DecodeJSON([]byte(b.String()), testNow)
	checkDecodeError(t, err, "reading 10000: batch has more than 10000 readings", CodeTooLarge, 10000, "", FormatJSON)
}

func itoa(i int) string {
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 10 {
		b = append([]byte{byte('0' + i%10)}, b...)
	}
	return string(b)
}

func TestValidateMetricName(t *testing.T) {
	for _, ok := range []string{"a", "temperature", "Temp_1", "x.y", "x-y", "urn:dev:ow:10e2073a01080063:voltage", "0", strings.Repeat("z", 128)} {
		if err := ValidateMetricName(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for bad, want := range map[string]string{
		"":                       "metric name is empty",
		"_x":                     "metric name starts with '_'; it must start with a letter or digit",
		".x":                     "metric name starts with '.'; it must start with a letter or digit",
		"-x":                     "metric name starts with '-'; it must start with a letter or digit",
		"a b":                    "metric name has ' ' at position 1; allowed are letters, digits, '_', '.', '-' and ':'",
		"a,b":                    "metric name has ',' at position 1; allowed are letters, digits, '_', '.', '-' and ':'",
		"a=b":                    "metric name has '=' at position 1; allowed are letters, digits, '_', '.', '-' and ':'",
		"a\"b":                   "metric name has '\"' at position 1; allowed are letters, digits, '_', '.', '-' and ':'",
		"a/b":                    "metric name has '/' at position 1; allowed are letters, digits, '_', '.', '-' and ':'",
		"a\x00":                  "metric name has '\\x00' at position 1; allowed are letters, digits, '_', '.', '-' and ':'",
		strings.Repeat("z", 129): "metric name is 129 characters, more than 128",
	} {
		err := ValidateMetricName(bad)
		if err == nil || err.Error() != want {
			t.Errorf("%q: got %v, want %s", bad, err, want)
		}
	}
}

func TestDetectFormat(t *testing.T) {
	for payload, want := range map[string]Format{
		`{"metrics":{"a":1}}`:                    FormatJSON,
		`[{"metrics":{"a":1}}]`:                  FormatJSON,
		`[{"ts":1,"metrics":{"a":1}}]`:           FormatJSON,
		`[{"x":{"n":1},"metrics":{"a":1}}]`:      FormatJSON,
		`[]`:                                     FormatJSON,
		`[1]`:                                    FormatJSON,
		``:                                       FormatJSON,
		`[{"n":"a","v":1}]`:                      FormatSenML,
		` [ {"bn":"d:","n":"a","v":1}]`:          FormatSenML,
		`[{"bt":1,"n":"a","v":1}]`:               FormatSenML,
		`[{"u":"Cel","v":1,"n":"a"}]`:            FormatSenML,
		`[{"vb":true,"n":"a"}]`:                  FormatSenML,
		`[{"bver":10,"n":"a","v":1}]`:            FormatSenML,
		`[{"ext":{"deep":[1,2]},"n":"a","v":1}]`: FormatSenML,
	} {
		if got := DetectFormat([]byte(payload)); got != want {
			t.Errorf("%s: got %v, want %v", payload, got, want)
		}
	}
}

func TestAppendJSONRoundTrip(t *testing.T) {
	in := []Reading{
		{TS: 1, Seq: 9, HasSeq: true, Metrics: []Metric{num("a", 1.5), boolm("b", true), strm("c", "q\"\\\n\x01é😀")}},
		{TS: MaxTS, Metrics: []Metric{num("big", 1e300), num("neg", -2.5e-300), num("zero", 0)}},
	}
	for _, rs := range [][]Reading{in, in[:1]} {
		out := AppendJSON(nil, rs)
		got, err := DecodeJSON(out, testNow)
		if err != nil {
			t.Fatalf("%s: %v", out, err)
		}
		if !reflect.DeepEqual(got, rs) {
			t.Fatalf("%s:\n got %+v\nwant %+v", out, got, rs)
		}
	}
	if got := string(AppendJSON(nil, in[:1])); got != `{"ts":1,"seq":9,"metrics":{"a":1.5,"b":true,"c":"q\"\\\u000a\u0001é😀"}}` {
		t.Errorf("encoding: %s", got)
	}
}

func TestToSamples(t *testing.T) {
	rs := []Reading{
		reading(10, num("t", 21.5), boolm("open", true), boolm("closed", false), strm("mode", "eco")),
		reading(20, num("t", 22)),
	}
	samples, events := ToSamples("dev1", rs, make([]Sample, 0, 8), nil)
	wantS := []Sample{{"dev1", "t", 10, 21.5}, {"dev1", "open", 10, 1}, {"dev1", "closed", 10, 0}, {"dev1", "t", 20, 22}}
	wantE := []Event{{"dev1", "mode", 10, "eco"}}
	if !reflect.DeepEqual(samples, wantS) || !reflect.DeepEqual(events, wantE) {
		t.Fatalf("got %+v %+v", samples, events)
	}
	// Append style: existing contents are kept.
	samples, _ = ToSamples("dev2", rs[1:], samples, events)
	if len(samples) != 5 || samples[4].Device != "dev2" {
		t.Fatalf("append: %+v", samples)
	}
}
