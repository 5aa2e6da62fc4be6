package influx

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	ihttp "github.com/influxdata/influxdb-client-go/v2/api/http"

	"github.com/fieldhub/fieldhub/store"
	"github.com/fieldhub/fieldhub/telemetry"
)

// Unit tests of single functions; the boundary is tested against a real
// influxd in influx_test.go.

func TestFluxString(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"d1", `"d1"`},
		{`a"b`, `"a\"b"`},
		{`a\b`, `"a\\b"`},
		{`x" or r.device != "`, `"x\" or r.device != \""`},
		{`${r.device}`, `"\${r.device}"`},
		{"tab\tnl\n", `"tab\x09nl\x0a"`},
		{"ü", `"\xc3\xbc"`},
		{"", `""`},
	} {
		if got := fluxString(tc.in); got != tc.want {
			t.Errorf("fluxString(%q) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

func TestAppendLine(t *testing.T) {
	s := &Store{meas: escapeMeasurement("tele metry,x")}
	for _, tc := range []struct {
		in   telemetry.Sample
		want string
	}{
		{telemetry.Sample{Device: "d1", Metric: "temp", TS: 1700000000123, Value: 21}, "tele\\ metry\\,x,device=d1 temp=21 1700000000123\n"},
		{telemetry.Sample{Device: "d1", Metric: "temp", TS: 1, Value: 21.5}, "tele\\ metry\\,x,device=d1 temp=21.5 1\n"},
		{telemetry.Sample{Device: "a b,c=d", Metric: `q"x y,z=w`, TS: -5, Value: -1e-300}, "tele\\ metry\\,x,device=a\\ b\\,c\\=d q\"x\\ y\\,z\\=w=-1e-300 -5\n"},
		{telemetry.Sample{Device: "d", Metric: "big", TS: 0, Value: 1e21}, "tele\\ metry\\,x,device=d big=1e+21 0\n"},
	} {
		if got := string(s.appendLine(nil, &tc.in)); got != tc.want {
			t.Errorf("appendLine(%+v) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestCheckSample(t *testing.T) {
	s := &Store{}
	ok := telemetry.Sample{Device: "d1", Metric: "temp", TS: 1, Value: 1}
	for _, tc := range []struct {
		name   string
		mutate func(*telemetry.Sample)
		bad    bool
	}{
		{"ok", func(*telemetry.Sample) {}, false},
		{"quotes and spaces ok", func(x *telemetry.Sample) { x.Metric = `a "b", c=d ${e}` }, false},
		{"empty metric", func(x *telemetry.Sample) { x.Metric = "" }, true},
		{"empty device", func(x *telemetry.Sample) { x.Device = "" }, true},
		{"backslash", func(x *telemetry.Sample) { x.Metric = `a\` }, true},
		{"newline", func(x *telemetry.Sample) { x.Device = "a\nb" }, true},
		{"invalid utf8", func(x *telemetry.Sample) { x.Metric = "\xff" }, true},
		{"time", func(x *telemetry.Sample) { x.Metric = "time" }, true},
		{"NaN", func(x *telemetry.Sample) { x.Value = math.NaN() }, true},
		{"Inf", func(x *telemetry.Sample) { x.Value = math.Inf(-1) }, true},
		{"max ts", func(x *telemetry.Sample) { x.TS = maxTS }, false},
		{"min ts", func(x *telemetry.Sample) { x.TS = minTS }, false},
		{"too late", func(x *telemetry.Sample) { x.TS = maxTS + 1 }, true},
		{"too early", func(x *telemetry.Sample) { x.TS = minTS - 1 }, true},
	} {
		x := ok
		tc.mutate(&x)
		if err := s.checkSample(&x); (err != nil) != tc.bad {
			t.Errorf("%s: checkSample = %v, want bad=%v", tc.name, err, tc.bad)
		}
	}
}

func TestConflictField(t *testing.T) {
	for _, tc := range []struct {
		msg, want string
		ok        bool
	}{
		{`partial write: field type conflict: input field "temp" on measurement "telemetry" is type float, already exists as type integer dropped=2`, "temp", true},
		{`partial write: field type conflict: input field "a" on measurement "telemetry" is b" on measurement "telemetry" is type float, already exists as type integer dropped=1`, `a" on measurement "telemetry" is b`, true},
		{`failure writing points to database: partial write: field type conflict: input field "x" on measurement "other" is type float`, "", false},
		{`database not found: "nope"`, "", false},
	} {
		got, ok := conflictField(tc.msg, "telemetry")
		if got != tc.want || ok != tc.ok {
			t.Errorf("conflictField(%q) = %q, %v; want %q, %v", tc.msg, got, ok, tc.want, tc.ok)
		}
	}
}

func TestSeriesFluxWindowOffset(t *testing.T) {
	s := &Store{opts: Options{Bucket: "b", Measurement: "m"}}
	for _, tc := range []struct {
		from int64
		step time.Duration
		want string // the window call
	}{
		{from: 1000, step: time.Second, want: "window(every: 1000000000ns, offset: 0ns"},
		{from: 1250, step: time.Second, want: "window(every: 1000000000ns, offset: 250000000ns"},
		{from: -250, step: time.Second, want: "window(every: 1000000000ns, offset: 750000000ns"},
		{from: 7, step: 1500 * time.Microsecond, want: "window(every: 1000000ns, offset: 0ns"}, // step truncated to 1ms
		{from: math.MinInt64, step: time.Second, want: "window(every: 1000000000ns, offset: 192000000ns"},
	} {
		flux, err := s.seriesFlux(store.SeriesQuery{Device: "d", Metric: "x", From: tc.from, To: max(tc.from, 0) + 10000, Step: tc.step, Agg: store.AggMax})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(flux, tc.want) || !strings.Contains(flux, "|> max()") {
			t.Errorf("from %d step %s: %s lacks %q", tc.from, tc.step, flux, tc.want)
		}
	}
	if flux, err := s.seriesFlux(store.SeriesQuery{Device: "d", Metric: "x", From: maxTS + 1, To: maxTS + 5}); flux != "" || err != nil {
		t.Errorf("range past InfluxDB's: %q, %v; want no query", flux, err)
	}
	for _, q := range []store.SeriesQuery{
		{Device: "", Metric: "x", From: 0, To: 1},
		{Device: "d", Metric: "x", From: 2, To: 1},
		{Device: "d", Metric: "x", From: 0, To: 1, Step: -time.Second},
		{Device: "d", Metric: "x", From: 0, To: 1, Step: time.Second, Agg: "median"},
	} {
		if _, err := s.seriesFlux(q); err == nil {
			t.Errorf("seriesFlux(%+v): no error", q)
		}
	}
}

func TestBackoff(t *testing.T) {
	s := &Store{opts: Options{RetryBackoff: Backoff{Min: 100 * time.Millisecond, Max: time.Second}}}
	for attempt, want := range []time.Duration{100, 200, 400, 800, 1000, 1000} {
		want *= time.Millisecond
		for range 50 {
			if d := s.backoff(attempt, 0); d < want/2 || d > want {
				t.Fatalf("attempt %d: backoff %s outside [%s, %s]", attempt, d, want/2, want)
			}
		}
	}
	if d := s.backoff(100, 0); d < 500*time.Millisecond || d > time.Second {
		t.Errorf("attempt 100: %s", d)
	}
	if d := s.backoff(0, 700*time.Millisecond); d != 700*time.Millisecond {
		t.Errorf("Retry-After 700ms: %s", d)
	}
	if d := s.backoff(0, time.Minute); d != time.Second {
		t.Errorf("Retry-After 1m capped at Max: %s", d)
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		name       string
		err        error
		timedOut   bool
		kind       string
		retryAfter time.Duration
		refused    bool
	}{
		{"refused connection", ihttp.NewError(errors.New("connect: connection refused")), false, kindConnection, 0, false},
		{"attempt timed out", ihttp.NewError(context.DeadlineExceeded), true, kindTimeout, 0, false},
		{"not an http error", errors.New("boom"), false, kindConnection, 0, false},
		{"500", &ihttp.Error{StatusCode: 500, Message: "timeout"}, false, kindServer, 0, false},
		{"503 retry-after", &ihttp.Error{StatusCode: 503, RetryAfter: 2}, false, kindServer, 2 * time.Second, false},
		{"429", &ihttp.Error{StatusCode: 429, RetryAfter: 1}, false, kindThrottled, time.Second, false},
		{"408", &ihttp.Error{StatusCode: 408}, false, kindTimeout, 0, false},
		{"400", &ihttp.Error{StatusCode: 400, Message: "partial write"}, false, kindRejected, 0, true},
		{"401", &ihttp.Error{StatusCode: 401, Message: "unauthorized"}, false, kindConfig, 0, false},
		{"404", &ihttp.Error{StatusCode: 404, Message: "database not found"}, false, kindConfig, 0, false},
		{"413", &ihttp.Error{StatusCode: 413}, false, kindRejected, 0, true},
	} {
		kind, ra, refused := classify(fmt.Errorf("wrapped: %w", tc.err), tc.timedOut)
		if kind != tc.kind || ra != tc.retryAfter || (refused != nil) != tc.refused {
			t.Errorf("%s: classify = %s, %s, %v; want %s, %s, refused=%v", tc.name, kind, ra, refused, tc.kind, tc.retryAfter, tc.refused)
		}
	}
}
