package telemetry

import (
	"errors"
	"math"
	"reflect"
	"testing"
	"unicode/utf8"
)

var jsonSeeds = []string{
	`{"ts": 1733300000123, "seq": 42, "metrics": {"temperature": 21.5, "door_open": false, "mode": "eco"}}`,
	`[{"ts":1,"metrics":{"a":1}},{"ts":"2024-12-04T08:13:20.123Z","seq":7,"metrics":{"a":2,"b":"x"}}]`,
	`{"metrics":{"s":"a\"b\\c\/d\b\f\n\r\t\u00e9\ud83d\ude00\ud800"}}`,
	`{"metrics":{"a":-0,"b":1e-400,"c":1.7976931348623157e308,"d":1E+2}}`,
	`{"metrics":{"a":{"nested":[1,2,3]}}}`,
	`{"metrics":{"a":1},"x":null}`,
	`[]`, `{}`, ``, `[{"metrics":{}}]`, `{"metrics":{"a":1`, `{"metrics":{"a b":1}}`,
}

var senmlSeeds = []string{
	`[{"n":"urn:dev:ow:10e2073a01080063","u":"Cel","v":23.1}]`,
	`[{"bn":"urn:dev:ow:10e2073a0108006:","bt":1.276020076001e+09,"bu":"A","bver":5,"n":"voltage","u":"V","v":120.1},{"n":"current","t":-5,"v":1.2},{"n":"current","v":1.7}]`,
	`[{"bn":"urn:dev:ow:10e2073a01080063:","n":"temp","u":"Cel","v":23.1},{"n":"label","vs":"Machine Room"},{"n":"open","vb":false},{"n":"nfc-reader","vd":"aGkgCg"}]`,
	`[{"bn":"d:","bt":1.320067464e+09},{"n":"a","t":60,"v":1},{"bv":10,"n":"b","v":1}]`,
	`[{"n":"a","v":1},{"n":"a","v":2}]`,
	`[{"n":"a","s":1}]`, `[{"n":"a","x_":1,"v":1}]`, `[]`, `[{}]`, `[{"n":"a","t":1e300,"v":1}]`,
}

// checkDecoded asserts what any successful decode guarantees, and that the
// readings survive an encode/decode round trip through fieldhub JSON.
func checkDecoded(t *testing.T, payload []byte, rs []Reading, err error) {
	if err != nil {
		var de *DecodeError
		if !errors.As(err, &de) {
			t.Fatalf("error is %T, not *DecodeError: %v", err, err)
		}
		switch de.Code {
		case CodeBadJSON, CodeBadField, CodeTooLarge:
		default:
			t.Fatalf("error without a known code: %#v", de)
		}
		if rs != nil {
			t.Fatalf("readings returned with an error")
		}
		return
	}
	if len(rs) == 0 || len(rs) > MaxReadingsPerBatch {
		t.Fatalf("%d readings", len(rs))
	}
	for _, r := range rs {
		if r.TS < 0 || r.TS > MaxTS {
			t.Fatalf("ts %d out of range", r.TS)
		}
		if len(r.Metrics) == 0 || len(r.Metrics) > MaxMetricsPerReading {
			t.Fatalf("%d metrics", len(r.Metrics))
		}
		seen := map[string]bool{}
		for _, m := range r.Metrics {
			if err := ValidateMetricName(m.Name); err != nil {
				t.Fatalf("decoded an invalid name: %v", err)
			}
			if seen[m.Name] {
				t.Fatalf("metric %q twice in one reading", m.Name)
			}
			seen[m.Name] = true
			switch m.Value.Kind {
			case KindNumber:
				if math.IsInf(m.Value.Num, 0) || math.IsNaN(m.Value.Num) {
					t.Fatalf("%s: non-finite %v", m.Name, m.Value.Num)
				}
			case KindBool:
			case KindString:
				if !utf8.ValidString(m.Value.Str) || len(m.Value.Str) > MaxStringValueLen {
					t.Fatalf("%s: bad string %q", m.Name, m.Value.Str)
				}
			default:
				t.Fatalf("%s: kind %v", m.Name, m.Value.Kind)
			}
		}
	}
	enc := AppendJSON(nil, rs)
	again, err := DecodeJSON(enc, 0)
	if err != nil {
		t.Fatalf("re-encoded %s does not decode: %v", enc, err)
	}
	if !reflect.DeepEqual(again, rs) {
		t.Fatalf("round trip of %q differs:\n got %+v\nwant %+v", payload, again, rs)
	}
}

func FuzzDecodeJSON(f *testing.F) {
	for _, s := range jsonSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		rs, err := DecodeJSON(payload, testNow)
		checkDecoded(t, payload, rs, err)
		// Decode agrees with DecodeJSON whenever it picks JSON.
		if DetectFormat(payload) == FormatJSON {
			rs2, err2 := Decode(payload, testNow)
			if !reflect.DeepEqual(rs, rs2) || (err == nil) != (err2 == nil) {
				t.Fatalf("Decode and DecodeJSON disagree")
			}
		}
	})
}

func FuzzDecodeSenML(f *testing.F) {
	for _, s := range senmlSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		rs, err := DecodeSenML(payload, testNow)
		checkDecoded(t, payload, rs, err)
		for i := 1; i < len(rs); i++ {
			if rs[i-1].TS >= rs[i].TS {
				t.Fatalf("readings not in strict time order: %d then %d", rs[i-1].TS, rs[i].TS)
			}
		}
	})
}
