package promapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fieldhub/fieldhub/promapi"
	"github.com/fieldhub/fieldhub/store"
	"github.com/fieldhub/fieldhub/store/tsdb"
	"github.com/fieldhub/fieldhub/telemetry"
)

// fixture is a real embedded store with 40 minutes of readings of three
// devices, and the API over it.
type fixture struct {
	st   *tsdb.Store
	srv  *httptest.Server
	from int64 // first sample, unix ms
	to   int64 // last sample
}

const every = 10 * time.Second

func newFixture(t *testing.T) *fixture {
	t.Helper()
	st, err := tsdb.Open(tsdb.Options{Dir: t.TempDir(), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	f := &fixture{st: st}
	// Whole minutes, 50 minutes ago: inside the store's accepted window.
	f.from = time.Now().Add(-50 * time.Minute).Truncate(time.Minute).UnixMilli()
	n := int((40 * time.Minute) / every)
	f.to = f.from + int64(n-1)*every.Milliseconds()
	var samples []telemetry.Sample
	energy := 1000.0
	for i := 0; i < n; i++ {
		ts := f.from + int64(i)*every.Milliseconds()
		for d, dev := range []string{"d1", "d2", "d3"} {
			v := 20 + float64(d) + 3*math.Sin(float64(i)/17) + float64(i%7)/10
			samples = append(samples, telemetry.Sample{Device: dev, Metric: "temperature", TS: ts, Value: v})
		}
		energy += 1 + float64(i%5)*0.25 // a counter: never decreases
		samples = append(samples,
			telemetry.Sample{Device: "d1", Metric: "energy", TS: ts, Value: energy},
			telemetry.Sample{Device: "d1", Metric: "temp.c", TS: ts, Value: float64(i)})
	}
	if err := st.Append(context.Background(), samples); err != nil {
		t.Fatal(err)
	}
	api, err := promapi.New(promapi.Options{Queryable: st.DB(), Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { api.Close() })
	f.srv = httptest.NewServer(api)
	t.Cleanup(f.srv.Close)
	return f
}

type apiResponse struct {
	Status    string          `json:"status"`
	Data      json.RawMessage `json:"data"`
	ErrorType string          `json:"errorType"`
	Error     string          `json:"error"`
}

type promSeries struct {
	Metric map[string]string `json:"metric"`
	Values [][2]any          `json:"values"` // matrix
	Value  [2]any            `json:"value"`  // vector
}

type queryResult struct {
	ResultType string       `json:"resultType"`
	Result     []promSeries `json:"result"`
}

func (f *fixture) get(t *testing.T, path string, q url.Values) (int, apiResponse) {
	t.Helper()
	resp, err := http.Get(f.srv.URL + path + "?" + q.Encode())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r apiResponse
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return resp.StatusCode, r
}

func (f *fixture) query(t *testing.T, path string, q url.Values) queryResult {
	t.Helper()
	st, r := f.get(t, path, q)
	if st != http.StatusOK || r.Status != "success" {
		t.Fatalf("%s %v: %d %s %s", path, q, st, r.ErrorType, r.Error)
	}
	var qr queryResult
	if err := json.Unmarshal(r.Data, &qr); err != nil {
		t.Fatal(err)
	}
	return qr
}

func secs(ms int64) string { return strconv.FormatFloat(float64(ms)/1000, 'f', 3, 64) }

// point decodes a [unix seconds, "value"] pair.
func point(t *testing.T, p [2]any) (int64, float64) {
	t.Helper()
	ts, ok := p[0].(float64)
	s, ok2 := p[1].(string)
	if !ok || !ok2 {
		t.Fatalf("bad point %v", p)
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		t.Fatal(err)
	}
	return int64(math.Round(ts * 1000)), v
}

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(b)) }

// TestOverTimeMatchesSeries: avg/min/max/last_over_time over a range
// query whose steps end where the store's buckets end give exactly the
// store's bucketed Series. The window of X_over_time(m[5m]) at t is
// (t-5m, t], so at t = bucket start + 5m - 1ms it is the bucket
// [start, start+5m).
func TestOverTimeMatchesSeries(t *testing.T) {
	f := newFixture(t)
	step := 5 * time.Minute
	for _, tc := range []struct {
		fn  string
		agg store.Agg
	}{
		{"avg_over_time", store.AggAvg},
		{"min_over_time", store.AggMin},
		{"max_over_time", store.AggMax},
		{"last_over_time", store.AggLast},
	} {
		t.Run(tc.fn, func(t *testing.T) {
			for _, dev := range []string{"d1", "d3"} {
				want, err := f.st.Series(context.Background(), store.SeriesQuery{Device: dev, Metric: "temperature",
					From: f.from, To: f.to, Step: step, Agg: tc.agg})
				if err != nil {
					t.Fatal(err)
				}
				start := f.from + step.Milliseconds() - 1
				qr := f.query(t, "/api/v1/query_range", url.Values{
					"query": {fmt.Sprintf(`%s(temperature{device=%q}[5m])`, tc.fn, dev)},
					"start": {secs(start)}, "end": {secs(start + int64(len(want)-1)*step.Milliseconds())}, "step": {"5m"},
				})
				if qr.ResultType != "matrix" || len(qr.Result) != 1 {
					t.Fatalf("result: %+v", qr)
				}
				got := qr.Result[0].Values
				if len(got) != len(want) || len(want) < 7 {
					t.Fatalf("%d points, store has %d buckets", len(got), len(want))
				}
				if qr.Result[0].Metric["device"] != dev {
					t.Errorf("labels %v", qr.Result[0].Metric)
				}
				for i, w := range want {
					ts, v := point(t, got[i])
					if ts != w.TS+step.Milliseconds()-1 || !near(v, w.Value) {
						t.Errorf("%s bucket %d: promql (%d, %v), store (%d, %v)", dev, i, ts, v, w.TS, w.Value)
					}
				}
			}
		})
	}
}

// TestRateMatchesSeries: for a counter sampled every 10s, rate(m[1m]) at a
// sample's time is (last - first) / (t_last - t_first) of the raw samples
// in (t-1m, t] that Series returns: PromQL extrapolates the sampled 50s to
// the window's 60s and divides by 60s, which cancels out when the first
// sample is one interval from the window's start.
func TestRateMatchesSeries(t *testing.T) {
	f := newFixture(t)
	checked := 0
	for ts := f.from + 2*time.Minute.Milliseconds(); ts <= f.to; ts += 170_000 { // 17 samples on, so instants fall on sample times
		raw, err := f.st.Series(context.Background(), store.SeriesQuery{Device: "d1", Metric: "energy", From: ts - 60_000 + 1, To: ts})
		if err != nil {
			t.Fatal(err)
		}
		if len(raw) != 6 {
			t.Fatalf("window at %d holds %d samples, want 6", ts, len(raw))
		}
		first, last := raw[0], raw[len(raw)-1]
		want := (last.Value - first.Value) / (float64(last.TS-first.TS) / 1000)

		qr := f.query(t, "/api/v1/query", url.Values{"query": {`rate(energy{device="d1"}[1m])`}, "time": {secs(ts)}})
		if qr.ResultType != "vector" || len(qr.Result) != 1 {
			t.Fatalf("result: %+v", qr)
		}
		gts, v := point(t, qr.Result[0].Value)
		if gts != ts || !near(v, want) {
			t.Errorf("rate at %d: promql (%d, %v), from Series %v", ts, gts, v, want)
		}
		if _, ok := qr.Result[0].Metric["__name__"]; ok {
			t.Errorf("rate keeps __name__: %v", qr.Result[0].Metric)
		}
		checked++
	}
	if checked < 5 {
		t.Fatalf("only %d instants checked", checked)
	}
}

// TestLabelMatchers: equality, regex and negative matchers and quoted
// metric names select the series the store holds, with its values.
func TestLabelMatchers(t *testing.T) {
	f := newFixture(t)
	latest := map[string]float64{}
	for _, dev := range []string{"d1", "d2", "d3"} {
		ss, err := f.st.Latest(context.Background(), dev)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range ss {
			if s.Metric == "temperature" {
				latest[dev] = s.Value
			}
		}
	}
	for _, tc := range []struct {
		query string
		want  []string // devices
	}{
		{`temperature{device="d2"}`, []string{"d2"}},
		{`temperature{device=~"d[12]"}`, []string{"d1", "d2"}},
		{`temperature{device!="d1"}`, []string{"d2", "d3"}},
		{`{__name__="temperature", device!~"d[23]"}`, []string{"d1"}},
		{`{__name__=~"temp.*", device="d1"}`, []string{"d1", "d1"}}, // temperature and temp.c
		{`temperature{device="nope"}`, nil},
	} {
		t.Run(tc.query, func(t *testing.T) {
			qr := f.query(t, "/api/v1/query", url.Values{"query": {tc.query}, "time": {secs(f.to)}})
			var got []string
			for _, s := range qr.Result {
				got = append(got, s.Metric["device"])
				_, v := point(t, s.Value)
				if s.Metric["__name__"] == "temperature" && !near(v, latest[s.Metric["device"]]) {
					t.Errorf("%v = %v, store's latest %v", s.Metric, v, latest[s.Metric["device"]])
				}
			}
			slices.Sort(got)
			if !slices.Equal(got, tc.want) {
				t.Errorf("devices %v, want %v", got, tc.want)
			}
		})
	}
	// A metric name with a dot needs the quoted form.
	qr := f.query(t, "/api/v1/query", url.Values{"query": {`{"temp.c", device="d1"}`}, "time": {secs(f.to)}})
	if len(qr.Result) != 1 || qr.Result[0].Metric["__name__"] != "temp.c" {
		t.Fatalf("quoted name: %+v", qr)
	}
	if _, v := point(t, qr.Result[0].Value); v != float64((f.to-f.from)/every.Milliseconds()) {
		t.Errorf("temp.c = %v", v)
	}
}

// TestRangeSelectorMatchesRawSeries: an instant query of a range selector
// returns the raw samples of (t-10m, t], as Series does.
func TestRangeSelectorMatchesRawSeries(t *testing.T) {
	f := newFixture(t)
	at := f.to - 3*time.Minute.Milliseconds()
	want, err := f.st.Series(context.Background(), store.SeriesQuery{Device: "d2", Metric: "temperature", From: at - 600_000 + 1, To: at})
	if err != nil {
		t.Fatal(err)
	}
	qr := f.query(t, "/api/v1/query", url.Values{"query": {`temperature{device="d2"}[10m]`}, "time": {secs(at)}})
	if qr.ResultType != "matrix" || len(qr.Result) != 1 || len(qr.Result[0].Values) != len(want) || len(want) != 60 {
		t.Fatalf("got %d series, want %d points: %+v", len(qr.Result), len(want), qr.ResultType)
	}
	for i, w := range want {
		ts, v := point(t, qr.Result[0].Values[i])
		if ts != w.TS || v != w.Value {
			t.Errorf("point %d: (%d, %v), store (%d, %v)", i, ts, v, w.TS, w.Value)
		}
	}
}

// TestLabelsAndSeries: the metadata endpoints list what the store holds.
func TestLabelsAndSeries(t *testing.T) {
	f := newFixture(t)
	strs := func(path string, q url.Values) []string {
		t.Helper()
		st, r := f.get(t, path, q)
		if st != http.StatusOK {
			t.Fatalf("%s: %d %s", path, st, r.Error)
		}
		var out []string
		if err := json.Unmarshal(r.Data, &out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	if got := strs("/api/v1/labels", nil); !slices.Equal(got, []string{"__name__", "device"}) {
		t.Errorf("labels %v", got)
	}
	if got := strs("/api/v1/label/device/values", nil); !slices.Equal(got, []string{"d1", "d2", "d3"}) {
		t.Errorf("device values %v", got)
	}
	if got := strs("/api/v1/label/__name__/values", nil); !slices.Equal(got, []string{"energy", "temp.c", "temperature"}) {
		t.Errorf("metric names %v", got)
	}
	if got := strs("/api/v1/label/__name__/values", url.Values{"match[]": {`{device="d2"}`}}); !slices.Equal(got, []string{"temperature"}) {
		t.Errorf("metric names of d2 %v", got)
	}
	if got := strs("/api/v1/label/device/values", url.Values{"limit": {"2"}}); !slices.Equal(got, []string{"d1", "d2"}) {
		t.Errorf("limited values %v", got)
	}
	// The range excludes everything before the data.
	if got := strs("/api/v1/label/device/values", url.Values{"end": {secs(f.from - 3_600_000)}}); len(got) != 0 {
		t.Errorf("values before the data: %v", got)
	}

	st, r := f.get(t, "/api/v1/series", url.Values{"match[]": {"temperature", `energy{device="d1"}`}})
	if st != http.StatusOK {
		t.Fatalf("series: %d %s", st, r.Error)
	}
	var sets []map[string]string
	if err := json.Unmarshal(r.Data, &sets); err != nil {
		t.Fatal(err)
	}
	if len(sets) != 4 {
		t.Fatalf("series %v", sets)
	}
	for _, s := range sets {
		if len(s) != 2 || s["device"] == "" || (s["__name__"] != "temperature" && s["__name__"] != "energy") {
			t.Errorf("series labels %v", s)
		}
	}
}

// TestErrors: bad requests get the API's error form and status.
func TestErrors(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		path   string
		q      url.Values
		status int
		typ    string
	}{
		{"/api/v1/query", url.Values{}, 400, "bad_data"},
		{"/api/v1/query", url.Values{"query": {"rate(temperature"}}, 400, "bad_data"},
		{"/api/v1/query", url.Values{"query": {"up"}, "time": {"yesterday"}}, 400, "bad_data"},
		{"/api/v1/query_range", url.Values{"query": {"up"}, "start": {"100"}, "end": {"50"}, "step": {"1"}}, 400, "bad_data"},
		{"/api/v1/query_range", url.Values{"query": {"up"}, "start": {"0"}, "end": {"100000"}, "step": {"1"}}, 400, "bad_data"},
		{"/api/v1/query_range", url.Values{"query": {"up"}, "start": {"0"}, "end": {"10"}, "step": {"0"}}, 400, "bad_data"},
		{"/api/v1/series", url.Values{}, 400, "bad_data"},
		{"/api/v1/series", url.Values{"match[]": {`{device=~".*"}`}}, 400, "bad_data"},
		{"/api/v1/label/device/values", url.Values{"limit": {"-1"}}, 400, "bad_data"},
		{"/api/v1/query", url.Values{"query": {`temperature{device="d1"} + on(nope) group_left temperature`}, "time": {secs(f.to)}}, 422, "execution"},
	} {
		st, r := f.get(t, tc.path, tc.q)
		if st != tc.status || r.Status != "error" || r.ErrorType != tc.typ || r.Error == "" {
			t.Errorf("%s %v: %d %+v, want %d %s", tc.path, tc.q, st, r, tc.status, tc.typ)
		}
	}
	// A scalar, POSTed as a form, as Grafana's health check does.
	resp, err := http.PostForm(f.srv.URL+"/api/v1/query", url.Values{"query": {"1+1"}, "time": {secs(f.to)}})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     [2]any `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		t.Fatal(err)
	}
	if r.Status != "success" || r.Data.ResultType != "scalar" || r.Data.Result[1] != "2" {
		t.Fatalf("1+1: %+v", r)
	}
}
