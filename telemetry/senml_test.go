package telemetry

import (
	"reflect"
	"strings"
	"testing"
)

// Times used by the RFC 8428 examples, in unix ms.
const (
	rfcT1 = 1276020076001 // 1.276020076001e+09 s
	rfcT2 = 1320067464000 // 1.320067464e+09 s
)

func TestDecodeSenML(t *testing.T) {
	tests := []struct {
		name    string
		payload string
		want    []Reading
	}{
		// RFC 8428 §5.1.1, Single Datapoint: no time, so "now".
		{"RFC 8428 5.1.1", `[{"n":"urn:dev:ow:10e2073a01080063","u":"Cel","v":23.1}]`,
			[]Reading{reading(testNow, num("urn:dev:ow:10e2073a01080063", 23.1))}},
		// RFC 8428 §5.1.2, Multiple Datapoints (first form): base name.
		{"RFC 8428 5.1.2 a", `[{"bn":"urn:dev:ow:10e2073a01080063:","n":"voltage","u":"V","v":120.1},{"n":"current","u":"A","v":1.2}]`,
			[]Reading{reading(testNow, num("urn:dev:ow:10e2073a01080063:voltage", 120.1), num("urn:dev:ow:10e2073a01080063:current", 1.2))}},
		// RFC 8428 §5.1.2 (second form): base time, relative times, bver, bu.
		{"RFC 8428 5.1.2 b", `[
		  {"bn":"urn:dev:ow:10e2073a0108006:","bt":1.276020076001e+09,"bu":"A","bver":5,"n":"voltage","u":"V","v":120.1},
		  {"n":"current","t":-5,"v":1.2},
		  {"n":"current","t":-4,"v":1.3},
		  {"n":"current","t":-3,"v":1.4},
		  {"n":"current","t":-2,"v":1.5},
		  {"n":"current","t":-1,"v":1.6},
		  {"n":"current","v":1.7}]`,
			[]Reading{
				reading(rfcT1-5000, num("urn:dev:ow:10e2073a0108006:current", 1.2)),
				reading(rfcT1-4000, num("urn:dev:ow:10e2073a0108006:current", 1.3)),
				reading(rfcT1-3000, num("urn:dev:ow:10e2073a0108006:current", 1.4)),
				reading(rfcT1-2000, num("urn:dev:ow:10e2073a0108006:current", 1.5)),
				reading(rfcT1-1000, num("urn:dev:ow:10e2073a0108006:current", 1.6)),
				reading(rfcT1, num("urn:dev:ow:10e2073a0108006:voltage", 120.1), num("urn:dev:ow:10e2073a0108006:current", 1.7)),
			}},
		// RFC 8428 §5.1.5, Multiple Data Types: vd kept as its base64url text.
		{"RFC 8428 5.1.5", `[{"bn":"urn:dev:ow:10e2073a01080063:","n":"temp","u":"Cel","v":23.1},{"n":"label","vs":"Machine Room"},{"n":"open","vb":false},{"n":"nfc-reader","vd":"aGkgCg"}]`,
			[]Reading{reading(testNow,
				num("urn:dev:ow:10e2073a01080063:temp", 23.1),
				strm("urn:dev:ow:10e2073a01080063:label", "Machine Room"),
				boolm("urn:dev:ow:10e2073a01080063:open", false),
				strm("urn:dev:ow:10e2073a01080063:nfc-reader", "aGkgCg"))}},
		// RFC 8428 §5.1.4, resolved form of 5.1.3's first records (absolute times on each record).
		{"RFC 8428 resolved records", `[{"n":"urn:dev:ow:10e2073a01080063:","u":"%RH","t":1.320067464e+09,"v":20},{"n":"urn:dev:ow:10e2073a01080063:","u":"%RH","t":1.320067524e+09,"v":20.3}]`,
			[]Reading{reading(rfcT2, num("urn:dev:ow:10e2073a01080063:", 20)), reading(rfcT2+60000, num("urn:dev:ow:10e2073a01080063:", 20.3))}},
		{"bt with relative t", `[{"bn":"d:","bt":1.320067464e+09,"n":"a","v":1},{"n":"a","t":60,"v":2}]`,
			[]Reading{reading(rfcT2, num("d:a", 1)), reading(rfcT2+60000, num("d:a", 2))}},
		{"relative time without bt", `[{"n":"a","t":-10.5,"v":1}]`, []Reading{reading(testNow-10500, num("a", 1))}},
		{"relative bt", `[{"bt":-60,"n":"a","v":1},{"n":"a","t":30,"v":2}]`,
			[]Reading{reading(testNow-60000, num("a", 1)), reading(testNow-30000, num("a", 2))}},
		{"base value", `[{"bn":"x:","bv":100,"n":"a","v":1.5},{"n":"b","v":-1}]`,
			[]Reading{reading(testNow, num("x:a", 101.5), num("x:b", 99))}},
		{"bv does not apply to vs/vb", `[{"bv":100,"n":"a","vs":"s"},{"n":"b","vb":true}]`,
			[]Reading{reading(testNow, strm("a", "s"), boolm("b", true))}},
		{"base fields overridden", `[{"bn":"a:","n":"x","v":1},{"bn":"b:","n":"x","v":2},{"bn":"","n":"c","v":3}]`,
			[]Reading{reading(testNow, num("a:x", 1), num("b:x", 2), num("c", 3))}},
		{"bn after n in the same record", `[{"n":"x","bn":"dev:","v":1}]`, []Reading{reading(testNow, num("dev:x", 1))}},
		{"base-only record", `[{"bn":"dev:","bt":1.320067464e+09},{"n":"a","v":1},{"n":"b","v":2}]`,
			[]Reading{reading(rfcT2, num("dev:a", 1), num("dev:b", 2))}},
		{"name from bn only", `[{"bn":"sensor1","v":5}]`, []Reading{reading(testNow, num("sensor1", 5))}},
		{"ignored fields", `[{"bn":"d:","bs":1,"bu":"W","n":"a","u":"W","ut":10,"s":55,"v":1,"x-ext":{"deep":[1,{"a":null}]}}]`,
			[]Reading{reading(testNow, num("d:a", 1))}},
		{"empty extension field name ignored", `[{"":1,"n":"a","v":1}]`, []Reading{reading(testNow, num("a", 1))}},
		{"ordered by time, grouped", `[{"bt":1.320067464e+09,"n":"a","t":120,"v":3},{"n":"a","v":1},{"n":"b","t":120,"v":4},{"n":"a","t":60,"v":2}]`,
			[]Reading{reading(rfcT2, num("a", 1)), reading(rfcT2+60000, num("a", 2)), reading(rfcT2+120000, num("a", 3), num("b", 4))}},
		{"millisecond rounding", `[{"n":"a","t":1.3200674641234e+09,"v":1}]`, []Reading{reading(rfcT2+123, num("a", 1))}},
		{"2^28 is absolute", `[{"n":"a","t":268435456,"v":1}]`, []Reading{reading(268435456000, num("a", 1))}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, dec := range []struct {
				name string
				f    func([]byte, int64) ([]Reading, error)
			}{{"DecodeSenML", DecodeSenML}, {"Decode", Decode}} {
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

func TestDecodeSenMLErrors(t *testing.T) {
	tests := []struct {
		name    string
		payload string
		want    string
		code    string
		index   int
		field   string
	}{
		// RFC 8428 §5.1.3, Multiple Measurements: records told apart by unit
		// only share a name and a time, which fieldhub cannot store.
		{"RFC 8428 5.1.3", `[{"bn":"urn:dev:ow:10e2073a01080063:","bt":1.320067464e+09,"bu":"%RH","v":20},{"u":"lon","v":24.30621},{"u":"lat","v":60.07965},{"t":60,"v":20.3},{"u":"lon","t":60,"v":24.30622}]`,
			`record 1: n: name "urn:dev:ow:10e2073a01080063:" at time 2011-10-31T13:24:24.000Z was already given in record 0; fieldhub keeps one value per name and time`, CodeBadField, 1, "n"},
		// RFC 8428 §5.1.6-style names with '/' are not fieldhub metric names.
		{"slash in name", `[{"bn":"2001:db8::2/","n":"temperature","u":"Cel","v":25.2}]`,
			`record 0: n: name "2001:db8::2/temperature" (bn + n) has '/' at position 11; allowed are letters, digits, '_', '.', '-' and ':'`, CodeBadField, 0, "n"},
		{"empty payload", ``, "payload is empty", CodeBadJSON, -1, ""},
		{"object", `{"n":"a","v":1}`, "a SenML pack must be an array of records, got object", CodeBadField, -1, ""},
		{"garbage", `<xml/>`, "invalid JSON at offset 0: expected an array, got '<'", CodeBadJSON, -1, ""},
		{"empty pack", `[]`, "pack is an empty array; send at least one record", CodeBadField, -1, ""},
		{"record not object", `[{"n":"a","v":1},"x"]`, "record 1: must be an object, got string", CodeBadField, 1, ""},
		{"empty record", `[{}]`, "record 0: record is empty", CodeBadField, 0, ""},
		{"no value", `[{"n":"a","u":"Cel"}]`, "record 0: has no value field (v, vs, vb or vd)", CodeBadField, 0, ""},
		{"only base records", `[{"bn":"a"},{"bt":1}]`, "pack has no record with a value (v, vs, vb or vd)", CodeBadField, -1, ""},
		{"sum only", `[{"n":"a","s":10}]`, "record 0: s: a record with a sum and no value is not supported; send the value as v", CodeBadField, 0, "s"},
		{"two values", `[{"n":"a","v":1,"vs":"x"}]`, "record 0: has more than one value field (v, vs, vb, vd)", CodeBadField, 0, ""},
		{"field twice", `[{"n":"a","v":1,"v":2}]`, "record 0: v: given twice", CodeBadField, 0, "v"},
		{"no name", `[{"v":1}]`, "record 0: n: record has no name (bn + n is empty)", CodeBadField, 0, "n"},
		{"bad name", `[{"n":"a b","v":1}]`, `record 0: n: name "a b" (bn + n) has ' ' at position 1; allowed are letters, digits, '_', '.', '-' and ':'`, CodeBadField, 0, "n"},
		{"v string", `[{"n":"a","v":"1"}]`, "record 0: v: must be a number, got string", CodeBadField, 0, "v"},
		{"v null", `[{"n":"a","v":null}]`, "record 0: v: must be a number, got null", CodeBadField, 0, "v"},
		{"vb number", `[{"n":"a","vb":1}]`, "record 0: vb: must be a bool, got number", CodeBadField, 0, "vb"},
		{"vs number", `[{"n":"a","vs":1}]`, "record 0: vs: must be a string, got number", CodeBadField, 0, "vs"},
		{"vd bool", `[{"n":"a","vd":true}]`, "record 0: vd: must be a string, got bool", CodeBadField, 0, "vd"},
		{"n number", `[{"n":1,"v":1}]`, "record 0: n: must be a string, got number", CodeBadField, 0, "n"},
		{"bn object", `[{"bn":{},"n":"a","v":1}]`, "record 0: bn: must be a string, got object", CodeBadField, 0, "bn"},
		{"bt string", `[{"bt":"now","n":"a","v":1}]`, "record 0: bt: must be a number, got string", CodeBadField, 0, "bt"},
		{"t infinite", `[{"n":"a","t":1e999,"v":1}]`, "record 0: t: number 1e999 is out of range; it must be finite", CodeBadField, 0, "t"},
		{"time before 1970", `[{"n":"a","t":-2e9,"v":1}]`, "record 0: t: time -2e+09 (bt + t) is outside 1970-01-01 to 9999-12-31", CodeBadField, 0, "t"},
		{"time after 9999", `[{"n":"a","t":1e15,"v":1}]`, "record 0: t: time 1e+15 (bt + t) is outside 1970-01-01 to 9999-12-31", CodeBadField, 0, "t"},
		{"bv + v overflows", `[{"n":"a","bv":1.7e308,"v":1.7e308}]`, "record 0: v: bv + v is out of range; it must be finite", CodeBadField, 0, "v"},
		{"bver too new", `[{"bver":11,"n":"a","v":1}]`, "record 0: bver: version 11 is not supported; fieldhub reads SenML versions 1 to 10", CodeBadField, 0, "bver"},
		{"must-understand field", `[{"n":"a","v":1,"rt_":"x"}]`, "record 0: rt_: unsupported must-understand field (RFC 8428 §4.4)", CodeBadField, 0, "rt_"},
		{"same name and time", `[{"n":"a","v":1},{"n":"b","v":2},{"n":"a","v":3}]`, `record 2: n: name "a" at time 2024-12-04T08:13:20.000Z was already given in record 0; fieldhub keeps one value per name and time`, CodeBadField, 2, "n"},
		{"syntax in record", `[{"n":"a","v":1},{"n":"b" "v":2}]`, "record 1: invalid JSON at offset 26: expected ',' or '}', got '\"'", CodeBadJSON, 1, ""},
		{"missing comma", `[{"n":"a","v":1}{"n":"b","v":2}]`, "record 0: invalid JSON at offset 16: expected ',' or ']', got '{'", CodeBadJSON, 0, ""},
		{"trailing", `[{"n":"a","v":1}]]`, "invalid JSON at offset 17: unexpected data after the JSON value, got ']'", CodeBadJSON, -1, ""},
		{"deep extension", `[{"n":"a","v":1,"x":` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `}]`, "record 0: x: values nested more than 32 deep", CodeTooLarge, 0, "x"},
		{"string too long", `[{"n":"a","vs":"` + strings.Repeat("x", MaxStringValueLen+1) + `"}]`, "record 0: vs: string is 4097 bytes, more than 4096", CodeTooLarge, 0, "vs"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs, err := DecodeSenML([]byte(tt.payload), testNow)
			if err == nil {
				t.Fatalf("no error, got %+v", rs)
			}
			checkDecodeError(t, err, tt.want, tt.code, tt.index, tt.field, FormatSenML)
		})
	}
}

func TestDecodeSenMLLimits(t *testing.T) {
	var b strings.Builder
	b.WriteString(`[`)
	for i := range MaxSenMLRecords + 1 {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`{"n":"a","t":`)
		b.WriteString(itoa(i + 1000000000))
		b.WriteString(`,"v":1}`)
	}
	b.WriteString(`]`)
	_, err := DecodeSenML([]byte(b.String()), testNow)
	checkDecodeError(t, err, "record 10000: pack has more than 10000 records", CodeTooLarge, 10000, "", FormatSenML)

	b.Reset()
	b.WriteString(`[`)
	for i := range MaxMetricsPerReading + 1 {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`{"n":"m`)
		b.WriteString(itoa(i))
		b.WriteString(`","v":1}`)
	}
	b.WriteString(`]`)
	_, err = DecodeSenML([]byte(b.String()), testNow)
	checkDecodeError(t, err, "record 1000: more than 1000 records share the time 2024-12-04T08:13:20.000Z", CodeTooLarge, 1000, "", FormatSenML)
}
