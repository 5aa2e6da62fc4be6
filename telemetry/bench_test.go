package telemetry

import (
	"encoding/json"
	"testing"
)

// The reference payloads: one reading of 10 metrics (~180 bytes of fieldhub JSON).
const (
	benchJSON  = `{"ts":1733300000123,"seq":42,"metrics":{"temperature":21.5,"humidity":48.2,"pressure":1013.2,"co2":612,"battery":3.71,"rssi":-67,"door_open":false,"fan_on":true,"mode":"eco","uptime":86400}}`
	benchSenML = `[{"bn":"th1:","bt":1733300000.123,"n":"temperature","v":21.5},{"n":"humidity","v":48.2},{"n":"pressure","v":1013.2},{"n":"co2","v":612},{"n":"battery","v":3.71},{"n":"rssi","v":-67},{"n":"door_open","vb":false},{"n":"fan_on","vb":true},{"n":"mode","vs":"eco"},{"n":"uptime","v":86400}]`
)

func benchDecode(b *testing.B, payload string, f func([]byte, int64) ([]Reading, error)) {
	p := []byte(payload)
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	for b.Loop() {
		rs, err := f(p, testNow)
		if err != nil || len(rs) != 1 || len(rs[0].Metrics) != 10 {
			b.Fatal(rs, err)
		}
	}
}

func BenchmarkDecodeJSON(b *testing.B)  { benchDecode(b, benchJSON, DecodeJSON) }
func BenchmarkDecodeSenML(b *testing.B) { benchDecode(b, benchSenML, DecodeSenML) }

// BenchmarkDecode includes the format detection.
func BenchmarkDecode(b *testing.B) {
	b.Run("json", func(b *testing.B) { benchDecode(b, benchJSON, Decode) })
	b.Run("senml", func(b *testing.B) { benchDecode(b, benchSenML, Decode) })
}

func BenchmarkValidate(b *testing.B) {
	dt := &DeviceType{Name: "t", UnknownMetrics: UnknownReject, Metrics: map[string]MetricSpec{}}
	rs, _ := DecodeJSON([]byte(benchJSON), 0)
	for _, m := range rs[0].Metrics {
		dt.Metrics[m.Name] = MetricSpec{Type: m.Value.Kind.String()}
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := dt.Validate(&rs[0]); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkToSamples(b *testing.B) {
	rs, _ := DecodeJSON([]byte(benchJSON), 0)
	var s []Sample
	var e []Event
	b.ReportAllocs()
	for b.Loop() {
		s, e = ToSamples("dev1", rs, s[:0], e[:0])
	}
}

// BenchmarkDecodeJSONStdlib is the baseline the hand-written scanner is
// measured against: encoding/json into a struct with a map of any.
func BenchmarkDecodeJSONStdlib(b *testing.B) {
	p := []byte(benchJSON)
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	for b.Loop() {
		var v struct {
			TS      json.RawMessage `json:"ts"`
			Seq     *uint64         `json:"seq"`
			Metrics map[string]any  `json:"metrics"`
		}
		if err := json.Unmarshal(p, &v); err != nil || len(v.Metrics) != 10 {
			b.Fatal(err)
		}
	}
}
