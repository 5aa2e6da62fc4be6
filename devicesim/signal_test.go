package devicesim

import (
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/telemetry"
)

func ptr[T any](v T) *T { return &v }

func series(t *testing.T, m MetricSpec, seed uint64, device string, n int, step time.Duration) []telemetry.Value {
	t.Helper()
	s, err := NewSignal(m, seed, device)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]telemetry.Value, n)
	for i := range out {
		out[i] = s.Next(time.Duration(i) * step)
	}
	return out
}

var allModels = []MetricSpec{
	{Name: "c", Model: ModelConstant, Value: 21.5},
	{Name: "s", Model: ModelSine, Period: time.Minute, Amplitude: 3, Offset: 20, Noise: 0.5},
	{Name: "w", Model: ModelRandomWalk, Step: 1, Min: 0, Max: 10},
	{Name: "st", Model: ModelStep, Steps: []StepPoint{{0, 1}, {10 * time.Second, 2}}, Cycle: 30 * time.Second},
	{Name: "b", Model: ModelToggle, Probability: 0.3},
	{Name: "e", Model: ModelEnum, Values: []string{"eco", "comfort", "off"}, Probability: 0.5},
}

func TestSignalsDeterministic(t *testing.T) {
	for _, m := range allModels {
		t.Run(m.Model, func(t *testing.T) {
			a := series(t, m, 42, "dev-1", 200, time.Second)
			b := series(t, m, 42, "dev-1", 200, time.Second)
			if !slices.Equal(a, b) {
				t.Fatalf("same seed, different series:\n%v\n%v", a, b)
			}
			// Random models depend on the seed and on the device.
			if m.Model == ModelConstant || m.Model == ModelStep {
				return
			}
			if slices.Equal(a, series(t, m, 43, "dev-1", 200, time.Second)) {
				t.Errorf("seed 43 gives the same series as 42")
			}
			if slices.Equal(a, series(t, m, 42, "dev-2", 200, time.Second)) {
				t.Errorf("dev-2 gives the same series as dev-1")
			}
		})
	}
}

func TestSignalShapes(t *testing.T) {
	t.Run("constant", func(t *testing.T) {
		for _, v := range series(t, MetricSpec{Name: "x", Model: ModelConstant, Value: true}, 1, "d", 10, time.Second) {
			if v != (telemetry.Value{Kind: telemetry.KindBool, Bool: true}) {
				t.Fatalf("got %+v", v)
			}
		}
	})
	t.Run("sine without noise", func(t *testing.T) {
		m := MetricSpec{Name: "x", Model: ModelSine, Period: 4 * time.Second, Amplitude: 2, Offset: 10}
		got := series(t, m, 1, "d", 5, time.Second)
		want := []float64{10, 12, 10, 8, 10}
		for i, v := range got {
			if math.Abs(v.Num-want[i]) > 1e-9 {
				t.Errorf("t=%ds: got %v, want %v", i, v.Num, want[i])
			}
		}
	})
	t.Run("sine noise averages out", func(t *testing.T) {
		m := MetricSpec{Name: "x", Model: ModelSine, Period: time.Second, Amplitude: 0, Offset: 5, Noise: 1}
		var sum float64
		vs := series(t, m, 1, "d", 10000, time.Second)
		for _, v := range vs {
			sum += v.Num
		}
		if mean := sum / float64(len(vs)); math.Abs(mean-5) > 0.1 {
			t.Errorf("mean %v, want about 5", mean)
		}
	})
	t.Run("decimals", func(t *testing.T) {
		m := MetricSpec{Name: "x", Model: ModelSine, Period: time.Minute, Amplitude: 3, Offset: 20, Noise: 1, Decimals: ptr(1)}
		for _, v := range series(t, m, 1, "d", 100, time.Second) {
			if r := math.Round(v.Num*10) / 10; r != v.Num {
				t.Fatalf("%v not rounded to 1 decimal", v.Num)
			}
		}
	})
	t.Run("random walk", func(t *testing.T) {
		m := MetricSpec{Name: "x", Model: ModelRandomWalk, Start: ptr(5.0), Step: 0.5, Min: 0, Max: 10}
		vs := series(t, m, 9, "d", 5000, time.Second)
		if vs[0].Num != 5 {
			t.Errorf("first value %v, want start 5", vs[0].Num)
		}
		lo, hi := vs[0].Num, vs[0].Num
		for i := 1; i < len(vs); i++ {
			if d := math.Abs(vs[i].Num - vs[i-1].Num); d > 0.5+1e-9 {
				t.Fatalf("step %d moved %v > 0.5", i, d)
			}
			lo, hi = min(lo, vs[i].Num), max(hi, vs[i].Num)
		}
		if lo < 0 || hi > 10 {
			t.Errorf("left [0,10]: %v..%v", lo, hi)
		}
		if hi-lo < 2 {
			t.Errorf("walk hardly moved: %v..%v", lo, hi)
		}
	})
	t.Run("step schedule with cycle", func(t *testing.T) {
		m := MetricSpec{Name: "x", Model: ModelStep, Steps: []StepPoint{{0, 1}, {10 * time.Second, 2}, {20 * time.Second, 3}}, Cycle: 30 * time.Second}
		got := series(t, m, 1, "d", 8, 5*time.Second)
		want := []float64{1, 1, 2, 2, 3, 3, 1, 1}
		for i, v := range got {
			if v.Num != want[i] {
				t.Errorf("t=%s: got %v, want %v", time.Duration(i)*5*time.Second, v.Num, want[i])
			}
		}
	})
	t.Run("toggle", func(t *testing.T) {
		never := series(t, MetricSpec{Name: "x", Model: ModelToggle, Probability: 0, Initial: true}, 1, "d", 50, time.Second)
		for _, v := range never {
			if !v.Bool {
				t.Fatal("p=0 toggled")
			}
		}
		always := series(t, MetricSpec{Name: "x", Model: ModelToggle, Probability: 1}, 1, "d", 50, time.Second)
		for i, v := range always {
			if v.Bool != (i%2 == 1) {
				t.Fatalf("p=1: reading %d is %v", i, v.Bool)
			}
		}
		some := series(t, MetricSpec{Name: "x", Model: ModelToggle, Probability: 0.2}, 1, "d", 5000, time.Second)
		flips := 0
		for i := 1; i < len(some); i++ {
			if some[i].Bool != some[i-1].Bool {
				flips++
			}
		}
		if flips < 800 || flips > 1200 {
			t.Errorf("p=0.2 flipped %d times in 5000", flips)
		}
	})
	t.Run("enum", func(t *testing.T) {
		vals := []string{"eco", "comfort", "off"}
		still := series(t, MetricSpec{Name: "x", Model: ModelEnum, Values: vals, Initial: "off"}, 1, "d", 20, time.Second)
		for _, v := range still {
			if v.Str != "off" {
				t.Fatalf("p=0 changed to %q", v.Str)
			}
		}
		seen := map[string]bool{}
		for _, v := range series(t, MetricSpec{Name: "x", Model: ModelEnum, Values: vals, Probability: 1}, 1, "d", 300, time.Second) {
			if !slices.Contains(vals, v.Str) {
				t.Fatalf("value %q not in %v", v.Str, vals)
			}
			seen[v.Str] = true
		}
		if len(seen) != 3 {
			t.Errorf("saw only %v", seen)
		}
	})
}

func TestSignalSet(t *testing.T) {
	n := func(f float64) telemetry.Value { return num(f) }
	for _, tc := range []struct {
		m       MetricSpec
		set     telemetry.Value
		wantErr bool
		want    telemetry.Value
	}{
		{MetricSpec{Name: "x", Model: ModelConstant, Value: 1}, n(7), false, n(7)},
		{MetricSpec{Name: "x", Model: ModelConstant, Value: 1}, telemetry.Value{Kind: telemetry.KindBool}, true, telemetry.Value{}},
		{MetricSpec{Name: "x", Model: ModelSine, Period: time.Minute, Offset: 1}, n(30), false, n(30)},
		{MetricSpec{Name: "x", Model: ModelRandomWalk, Step: 0.0001, Min: 0, Max: 100}, n(42), false, n(42)},
		{MetricSpec{Name: "x", Model: ModelRandomWalk, Step: 1, Min: 0, Max: 100}, n(142), true, telemetry.Value{}},
		{MetricSpec{Name: "x", Model: ModelStep, Steps: []StepPoint{{0, 1}}}, n(9), false, n(9)},
		{MetricSpec{Name: "x", Model: ModelToggle}, telemetry.Value{Kind: telemetry.KindBool, Bool: true}, false, telemetry.Value{Kind: telemetry.KindBool, Bool: true}},
		{MetricSpec{Name: "x", Model: ModelEnum, Values: []string{"a", "b"}}, telemetry.Value{Kind: telemetry.KindString, Str: "b"}, false, telemetry.Value{Kind: telemetry.KindString, Str: "b"}},
		{MetricSpec{Name: "x", Model: ModelEnum, Values: []string{"a", "b"}}, telemetry.Value{Kind: telemetry.KindString, Str: "z"}, true, telemetry.Value{}},
	} {
		s, err := NewSignal(tc.m, 1, "d")
		if err != nil {
			t.Fatal(err)
		}
		err = s.Set(tc.set)
		if (err != nil) != tc.wantErr {
			t.Errorf("%s Set(%+v): err %v, want error %v", tc.m.Model, tc.set, err, tc.wantErr)
			continue
		}
		if err != nil {
			continue
		}
		got := s.Next(0)
		if tc.m.Model == ModelRandomWalk {
			got.Num = math.Round(got.Num)
		}
		if got != tc.want {
			t.Errorf("%s after Set: got %+v, want %+v", tc.m.Model, got, tc.want)
		}
	}
}

func TestMetricSpecValidate(t *testing.T) {
	for _, tc := range []struct {
		m    MetricSpec
		want string
	}{
		{MetricSpec{Name: "x"}, "model is missing"},
		{MetricSpec{Name: "x", Model: "square"}, `unknown model "square"`},
		{MetricSpec{Name: "x", Model: ModelConstant}, "value: missing"},
		{MetricSpec{Name: "x", Model: ModelSine}, "period > 0"},
		{MetricSpec{Name: "x", Model: ModelRandomWalk, Min: 5, Max: 1, Step: 1}, "min < max"},
		{MetricSpec{Name: "x", Model: ModelRandomWalk, Min: 0, Max: 1}, "step > 0"},
		{MetricSpec{Name: "x", Model: ModelStep}, "at least one"},
		{MetricSpec{Name: "x", Model: ModelStep, Steps: []StepPoint{{time.Second, 1}, {0, 2}}}, "must be after"},
		{MetricSpec{Name: "x", Model: ModelToggle, Probability: 2}, "outside [0, 1]"},
		{MetricSpec{Name: "x", Model: ModelEnum}, "needs values"},
		{MetricSpec{Name: "x", Model: ModelEnum, Values: []string{"a"}, Initial: "b"}, "not one of values"},
	} {
		err := tc.m.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: got %v, want error containing %q", tc.m, err, tc.want)
		}
	}
}
