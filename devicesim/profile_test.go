package devicesim

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fieldhub/fieldhub/internal/testkit"
	"github.com/fieldhub/fieldhub/telemetry"
)

func TestExampleProfilesLoad(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(testkit.RepoRoot(), "configs", "devicesim", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no example profiles: %v", err)
	}
	for _, f := range files {
		p, err := LoadProfile(f)
		if err != nil {
			t.Errorf("%s: %v", filepath.Base(f), err)
			continue
		}
		if len(p.Devices()) == 0 {
			t.Errorf("%s: no devices", filepath.Base(f))
		}
	}
}

func TestParseProfileDefaultsAndIDs(t *testing.T) {
	p := testProfile(t, `
seed: 3
id_prefix: sim-
devices:
  - type: thermostat
    count: 12
    metrics:
      temperature: {model: constant, value: 20}
      alpha: {model: toggle, probability: 0.5}
  - type: door
    count: 1
    id_prefix: front-door-
    interval: 2s
    qos: 0
    metrics:
      open: {model: toggle}
`)
	if p.Interval != DefaultInterval || *p.QoS != 1 || p.Buffer != DefaultBuffer || p.Batch != DefaultBatch || p.Backoff != DefaultBackoff {
		t.Errorf("defaults not applied: %+v", p)
	}
	ds := p.Devices()
	if len(ds) != 13 || ds[0].ID != "sim-thermostat-001" || ds[11].ID != "sim-thermostat-012" || ds[12].ID != "front-door-001" {
		t.Errorf("ids: %v %v %v", ds[0].ID, ds[11].ID, ds[12].ID)
	}
	if ds[12].Type.Interval != 2*time.Second || *ds[12].Type.QoS != 0 || ds[0].Type.Interval != DefaultInterval {
		t.Errorf("per-type settings lost")
	}
	if m := p.Types[0].Metrics; m[0].Name != "alpha" || m[1].Name != "temperature" {
		t.Errorf("metrics not sorted by name: %v, %v", m[0].Name, m[1].Name)
	}
}

func TestParseProfileErrors(t *testing.T) {
	base := "devices:\n  - type: t\n    count: 1\n    metrics:\n      x: {model: constant, value: 1}\n"
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"unknown top key", "colour: red\n" + base, `unknown key "colour"`},
		{"unknown type key", "devices:\n  - type: t\n    count: 1\n    colour: red\n    metrics:\n      x: {model: constant, value: 1}\n", `unknown key "colour"`},
		{"unknown metric key", "devices:\n  - type: t\n    count: 1\n    metrics:\n      x: {model: constant, value: 1, perod: 1s}\n", `unknown key "perod"`},
		{"unknown fault key", "faults: {malformed: 3}\n" + base, `unknown key "malformed"`},
		{"empty", "", "empty"},
		{"no devices", "seed: 1\n", "at least one device type"},
		{"bad qos", "qos: 2\n" + base, "qos: 2 not supported"},
		{"zero count", "devices:\n  - type: t\n    metrics:\n      x: {model: constant, value: 1}\n", "count must be >= 1"},
		{"no metrics", "devices:\n  - type: t\n    count: 1\n", "at least one metric"},
		{"bad model", "devices:\n  - type: t\n    count: 1\n    metrics:\n      x: {model: saw}\n", `unknown model "saw"`},
		{"bad pct", "faults: {malformed_pct: 150}\n" + base, "malformed_pct: 150 outside [0, 100]"},
		{"bad storm", "storm: {every: 1s}\n" + base, "storm: pct"},
		{"bad id", "id_prefix: 'a/b'\n" + base, "bad id"},
		{"bad duration", "interval: soon\n" + base, "soon"},
		{"bad expect", "expect: [stord=1]\n" + base, `unknown key "stord"`},
		{"dup prefix", "devices:\n  - {type: a, count: 1, id_prefix: x-, metrics: {v: {model: toggle}}}\n  - {type: b, count: 1, id_prefix: x-, metrics: {v: {model: toggle}}}\n", "used by another type"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseProfile([]byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want error containing %q", err, tc.want)
			}
		})
	}
}

func TestCredentialsFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "creds.csv")
	want := []Credential{{"d-1", "tok1"}, {"d-2", "tok,2"}}
	if err := WriteCredentials(path, want); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", st.Mode().Perm())
	}
	got, err := ReadCredentials(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("round trip: %v", got)
	}

	jl, err := ParseCredentials([]byte(`{"id":"a","token":"x"}` + "\n\n" + `{"id":"b","token":"y"}` + "\n"))
	if err != nil || len(jl) != 2 || jl[1] != (Credential{"b", "y"}) {
		t.Errorf("JSON lines: %v, %v", jl, err)
	}
	for _, bad := range []string{"a,x\na,y\n", "a/b,x\n", "a,\n", "a,b,c\n", `{"id":"a","token":"x","extra":1}`} {
		if _, err := ParseCredentials([]byte(bad)); err == nil {
			t.Errorf("%q: accepted", bad)
		}
	}
}

func TestParseExpectation(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Expectation
		err  bool
	}{
		{"stored=all", Expectation{Key: "stored", Op: "=", All: true}, false},
		{"rejected>=3", Expectation{Key: "rejected", Op: ">=", N: 3}, false},
		{"replies<=0", Expectation{Key: "replies", Op: "<=", N: 0}, false},
		{"stored", Expectation{}, true},
		{"nope=1", Expectation{}, true},
		{"stored=-1", Expectation{}, true},
		{"stored>1", Expectation{}, true},
	} {
		got, err := ParseExpectation(tc.in)
		if (err != nil) != tc.err || (err == nil && got != tc.want) {
			t.Errorf("%q: got %+v, %v", tc.in, got, err)
		}
		if err == nil && got.String() != tc.in {
			t.Errorf("%q: String() = %q", tc.in, got.String())
		}
	}
}

func TestHistogram(t *testing.T) {
	var h Histogram
	for i := 1; i <= 10000; i++ {
		h.Record(time.Duration(i) * time.Microsecond)
	}
	for _, tc := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 5000 * time.Microsecond}, {0.99, 9900 * time.Microsecond}, {0.999, 9990 * time.Microsecond}, {1, 10000 * time.Microsecond}} {
		got := h.Quantile(tc.q)
		if rel := float64(got-tc.want) / float64(tc.want); rel < 0 || rel > 1.0/64 {
			t.Errorf("q%v = %v, want %v within +1/64", tc.q, got, tc.want)
		}
	}
	if h.Count() != 10000 || h.Max() != 10*time.Millisecond {
		t.Errorf("count %d max %v", h.Count(), h.Max())
	}
	// Bucket bounds are monotonic and every value falls in its bucket.
	for _, v := range []uint64{0, 1, 127, 128, 129, 1000, 1 << 20, 1<<40 + 12345, 1 << 62} {
		i := histIndex(v)
		if histHigh(i) < v || (i > 0 && histHigh(i-1) >= v) {
			t.Errorf("value %d in bucket %d [.., %d], previous high %d", v, i, histHigh(i), histHigh(i-1))
		}
	}
}

func TestEncodeReading(t *testing.T) {
	b := appendReading(nil, 1733300000123, 42, [][]byte{[]byte(`"door_open"`), []byte(`"mode"`), []byte(`"t"`)},
		[]telemetryValue{boolV(false), strV(`e"co`), num(21.5)})
	want := `{"ts":1733300000123,"seq":42,"metrics":{"door_open":false,"mode":"e\"co","t":21.5}}`
	if string(b) != want {
		t.Fatalf("got  %s\nwant %s", b, want)
	}
	rs, err := DecodeTelemetry(appendBatch(nil, []*reading{{obj: b}, {obj: b, dup: true}}))
	if err != nil || len(rs) != 3 || rs[2].Seq != 42 || rs[2].Metrics["t"] != 21.5 {
		t.Fatalf("batch: %+v, %v", rs, err)
	}
}

type telemetryValue = telemetry.Value

func boolV(b bool) telemetry.Value  { return telemetry.Value{Kind: telemetry.KindBool, Bool: b} }
func strV(s string) telemetry.Value { return telemetry.Value{Kind: telemetry.KindString, Str: s} }

func TestFleetMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	p := testProfile(t, "devices:\n  - {type: s, count: 2, metrics: {t: {model: toggle}}}\n")
	if _, err := NewFleet(FleetConfig{Profile: p, Broker: "tcp://127.0.0.1:1", Registerer: reg}); err == nil {
		t.Fatal("a fleet without credentials was accepted")
	}
	f, err := NewFleet(FleetConfig{Profile: p, Broker: "tcp://127.0.0.1:1", Anonymous: true, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Devices()) != 2 || f.Device("s-001") == nil {
		t.Fatalf("devices: %v", f.Devices())
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	for _, want := range []string{"fieldhub_devicesim_readings_total", "fieldhub_devicesim_fault_malformed_total", "fieldhub_devicesim_commands_invalid_total"} {
		if !names[want] {
			t.Errorf("metric %s not registered (have %v)", want, names)
		}
	}
	for _, bad := range []string{"", "localhost:1883", "ws://h:1", "tcp://nohost"} {
		if _, err := NewFleet(FleetConfig{Profile: p, Broker: bad, Anonymous: true}); err == nil {
			t.Errorf("broker %q accepted", bad)
		}
	}
}
