// Package promapi serves the read side of the Prometheus HTTP API over
// fieldhub's embedded TSDB, evaluated by the PromQL engine
// (github.com/prometheus/prometheus/promql), so Grafana's Prometheus data
// source (or any PromQL client) reads fieldhub directly:
//
//	GET|POST /api/v1/query               instant query
//	GET|POST /api/v1/query_range         range query
//	GET|POST /api/v1/labels              label names
//	GET      /api/v1/label/{name}/values label values
//	GET|POST /api/v1/series              series matching match[]
//	GET      /api/v1/metadata            always empty (fieldhub keeps no metric metadata)
//	GET      /api/v1/status/buildinfo    a Prometheus 3 version, for clients that pick features by it
//
// Paths are relative to where the handler is mounted; the hub mounts it at
// /prometheus (so Grafana's URL is http://hub:8080/prometheus) behind the
// API's token authentication. Answers have the Prometheus API's JSON form:
// {"status":"success","data":...,"warnings":[...]} or
// {"status":"error","errorType":"bad_data","error":"..."}.
//
// Series are the store's: one per (device, metric), labelled
// __name__ = the metric and device = the device id (see store/tsdb), e.g.
// avg_over_time(temperature{device="boiler-1"}[10m]). Metric names with
// '.' or '-' need PromQL's quoted form: {"temp.c", device="th-1"}.
package promapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/util/annotations"
)

// Options configure New. Queryable is required.
type Options struct {
	// Queryable is the storage to read, e.g. store/tsdb's DB().
	Queryable storage.Queryable
	// Timeout bounds one query (default 2m); a request's timeout parameter
	// may shorten it.
	Timeout time.Duration
	// MaxSamples bounds the samples a query may hold in memory at once
	// (default 50,000,000, Prometheus' default).
	MaxSamples int
	// LookbackDelta is how far back an instant selector looks for a sample
	// (default 5m, Prometheus' default). Devices reporting less often than
	// this vanish from instant queries between readings; use
	// last_over_time(m[1h]) for them.
	LookbackDelta time.Duration
	// Now is the clock, for a query without a time (default time.Now).
	Now        func() time.Time
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// API is the HTTP handler. Close it after the server stopped using it.
type API struct {
	o        Options
	engine   *promql.Engine
	parser   parser.Parser
	mux      *http.ServeMux
	requests *prometheus.CounterVec
	reg      prometheus.Registerer
}

// Bounds of the API.
const (
	maxResults    = 100_000 // labels, values and series per answer unless limit says less
	maxPoints     = 11_000  // points per series of a range query, as Prometheus
	maxMatchers   = 100
	maxQueryBytes = 64 << 10
)

// New builds the API and its PromQL engine.
func New(o Options) (*API, error) {
	if o.Queryable == nil {
		return nil, errors.New("promapi: Queryable is required")
	}
	if o.Timeout <= 0 {
		o.Timeout = 2 * time.Minute
	}
	if o.MaxSamples <= 0 {
		o.MaxSamples = 50_000_000
	}
	if o.LookbackDelta <= 0 {
		o.LookbackDelta = 5 * time.Minute
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	a := &API{o: o, parser: parser.NewParser(parser.Options{}), mux: http.NewServeMux()}
	a.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "fieldhub_promapi_requests_total",
		Help: "Requests to the Prometheus-compatible API, by endpoint and HTTP status.",
	}, []string{"endpoint", "code"})
	var engineReg prometheus.Registerer
	if o.Registerer != nil {
		if err := o.Registerer.Register(a.requests); err != nil {
			return nil, fmt.Errorf("promapi metrics: %w", err)
		}
		a.reg = o.Registerer
		// The engine's own metrics, as fieldhub_prometheus_engine_*.
		engineReg = prometheus.WrapRegistererWithPrefix("fieldhub_", o.Registerer)
	}
	a.engine = promql.NewEngine(promql.EngineOpts{
		Logger:               o.Logger,
		Reg:                  engineReg,
		MaxSamples:           o.MaxSamples,
		Timeout:              o.Timeout,
		LookbackDelta:        o.LookbackDelta,
		EnableAtModifier:     true,
		EnableNegativeOffset: true,
		Parser:               a.parser,
		// Subqueries without a step use this interval, as Prometheus does
		// with its default global evaluation interval of 1m.
		NoStepSubqueryIntervalFn: func(int64) int64 { return time.Minute.Milliseconds() },
	})
	a.route("query", "/api/v1/query", a.query)
	a.route("query_range", "/api/v1/query_range", a.queryRange)
	a.route("labels", "/api/v1/labels", a.labelNames)
	a.route("label_values", "/api/v1/label/{name}/values", a.labelValues)
	a.route("series", "/api/v1/series", a.series)
	a.route("metadata", "/api/v1/metadata", func(*http.Request) (any, []string, *apiError) {
		return map[string]any{}, nil, nil
	})
	a.route("buildinfo", "/api/v1/status/buildinfo", func(*http.Request) (any, []string, *apiError) {
		return map[string]string{"version": "3.0.0", "application": "fieldhub"}, nil, nil
	})
	return a, nil
}

// Close releases the engine and unregisters the metrics.
func (a *API) Close() error {
	if a.reg != nil {
		a.reg.Unregister(a.requests)
	}
	return a.engine.Close()
}

func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) { a.mux.ServeHTTP(w, r) }

// apiError is a failed request in the Prometheus API's terms.
type apiError struct {
	typ    string // bad_data, execution, timeout, canceled, internal, not_found
	status int
	err    error
}

func badData(format string, args ...any) *apiError {
	return &apiError{"bad_data", http.StatusBadRequest, fmt.Errorf(format, args...)}
}

type response struct {
	Status    string   `json:"status"`
	Data      any      `json:"data,omitempty"`
	ErrorType string   `json:"errorType,omitempty"`
	Error     string   `json:"error,omitempty"`
	Warnings  []string `json:"warnings,omitempty"`
}

func (a *API) route(name, path string, fn func(*http.Request) (any, []string, *apiError)) {
	a.mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
		status := http.StatusOK
		defer func() { a.requests.WithLabelValues(name, strconv.Itoa(status)).Inc() }()
		w.Header().Set("Content-Type", "application/json")
		if r.Method != http.MethodGet && r.Method != http.MethodPost {
			w.Header().Set("Allow", "GET, POST")
			status = http.StatusMethodNotAllowed
			writeResponse(w, status, response{Status: "error", ErrorType: "bad_data", Error: "use GET or POST"})
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxQueryBytes)
		if err := r.ParseForm(); err != nil {
			status = http.StatusBadRequest
			writeResponse(w, status, response{Status: "error", ErrorType: "bad_data", Error: "parse parameters: " + err.Error()})
			return
		}
		data, warnings, aerr := fn(r)
		if aerr != nil {
			status = aerr.status
			a.o.Logger.Debug("prometheus API request failed", "endpoint", name, "error", aerr.err)
			writeResponse(w, status, response{Status: "error", ErrorType: aerr.typ, Error: aerr.err.Error(), Warnings: warnings})
			return
		}
		writeResponse(w, status, response{Status: "success", Data: data, Warnings: warnings})
	})
}

func writeResponse(w http.ResponseWriter, status int, r response) {
	b, err := json.Marshal(r)
	if err != nil {
		status = http.StatusInternalServerError
		b, _ = json.Marshal(response{Status: "error", ErrorType: "internal", Error: "encode answer: " + err.Error()})
	}
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// queryData is the data of a query answer.
type queryData struct {
	ResultType parser.ValueType `json:"resultType"`
	Result     any              `json:"result"`
}

func (a *API) query(r *http.Request) (any, []string, *apiError) {
	qs := r.FormValue("query")
	if qs == "" {
		return nil, nil, badData("query: required")
	}
	ts, err := parseTimeParam(r, "time", a.o.Now())
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel, aerr := a.queryContext(r)
	if aerr != nil {
		return nil, nil, aerr
	}
	defer cancel()
	q, qerr := a.engine.NewInstantQuery(ctx, a.o.Queryable, a.queryOpts(r), qs, ts)
	if qerr != nil {
		return nil, nil, badData("query: %v", qerr)
	}
	defer q.Close()
	return a.result(q.Exec(ctx), qs)
}

func (a *API) queryRange(r *http.Request) (any, []string, *apiError) {
	qs := r.FormValue("query")
	if qs == "" {
		return nil, nil, badData("query: required")
	}
	start, err := parseTimeParam(r, "start", time.Time{})
	if err != nil {
		return nil, nil, err
	}
	end, err := parseTimeParam(r, "end", time.Time{})
	if err != nil {
		return nil, nil, err
	}
	if start.IsZero() || end.IsZero() {
		return nil, nil, badData("start and end: required")
	}
	if end.Before(start) {
		return nil, nil, badData("end: before start")
	}
	step, perr := parseDuration(r.FormValue("step"))
	if perr != nil {
		return nil, nil, badData("step: %v", perr)
	}
	if step <= 0 {
		return nil, nil, badData("step: zero or negative query resolution step widths are not accepted; try a positive integer")
	}
	if end.Sub(start)/step > maxPoints {
		return nil, nil, badData("step: exceeded maximum resolution of %d points per timeseries; try decreasing the query resolution (?step=XX)", maxPoints)
	}
	ctx, cancel, aerr := a.queryContext(r)
	if aerr != nil {
		return nil, nil, aerr
	}
	defer cancel()
	q, qerr := a.engine.NewRangeQuery(ctx, a.o.Queryable, a.queryOpts(r), qs, start, end, step)
	if qerr != nil {
		return nil, nil, badData("query: %v", qerr)
	}
	defer q.Close()
	return a.result(q.Exec(ctx), qs)
}

func (a *API) queryContext(r *http.Request) (context.Context, context.CancelFunc, *apiError) {
	ctx := r.Context()
	if t := r.FormValue("timeout"); t != "" {
		d, err := parseDuration(t)
		if err != nil || d <= 0 {
			return nil, nil, badData("timeout: %q is not a positive duration", t)
		}
		c, cancel := context.WithTimeout(ctx, d)
		return c, cancel, nil
	}
	return ctx, func() {}, nil
}

func (a *API) queryOpts(r *http.Request) promql.QueryOpts {
	var lookback time.Duration
	if v := r.FormValue("lookback_delta"); v != "" {
		if d, err := parseDuration(v); err == nil && d > 0 {
			lookback = d
		}
	}
	return promql.NewPrometheusQueryOpts(r.FormValue("stats") == "all", lookback, nil)
}

func (a *API) result(res *promql.Result, qs string) (any, []string, *apiError) {
	warnings, infos := res.Warnings.AsStrings(qs, 10, 10)
	warnings = append(warnings, infos...)
	if res.Err != nil {
		return nil, warnings, queryError(res.Err)
	}
	switch v := res.Value.(type) {
	case promql.Matrix:
		out := make([]series, len(v))
		for i, s := range v {
			out[i] = series{Metric: s.Metric, Values: s.Floats, Histograms: s.Histograms}
		}
		return queryData{ResultType: v.Type(), Result: out}, warnings, nil
	case promql.Vector:
		if v == nil {
			v = promql.Vector{}
		}
		return queryData{ResultType: v.Type(), Result: v}, warnings, nil
	case promql.Scalar:
		return queryData{ResultType: v.Type(), Result: v}, warnings, nil
	case promql.String:
		return queryData{ResultType: v.Type(), Result: v}, warnings, nil
	}
	return nil, warnings, &apiError{"internal", http.StatusInternalServerError, fmt.Errorf("unexpected result type %T", res.Value)}
}

// series is a range query's series in the API's form.
type series struct {
	Metric     labels.Labels   `json:"metric"`
	Values     []promql.FPoint `json:"values,omitempty"`
	Histograms []promql.HPoint `json:"histograms,omitempty"`
}

func queryError(err error) *apiError {
	var (
		canceled promql.ErrQueryCanceled
		timeout  promql.ErrQueryTimeout
		storErr  promql.ErrStorage
	)
	switch {
	case errors.As(err, &canceled), errors.Is(err, context.Canceled):
		return &apiError{"canceled", http.StatusServiceUnavailable, err}
	case errors.As(err, &timeout), errors.Is(err, context.DeadlineExceeded):
		return &apiError{"timeout", http.StatusServiceUnavailable, err}
	case errors.As(err, &storErr):
		return &apiError{"internal", http.StatusInternalServerError, err}
	}
	return &apiError{"execution", http.StatusUnprocessableEntity, err}
}

// The label and series endpoints.

func (a *API) selectRange(r *http.Request) (start, end int64, aerr *apiError) {
	s, aerr := parseTimeParam(r, "start", time.Time{})
	if aerr != nil {
		return 0, 0, aerr
	}
	e, aerr := parseTimeParam(r, "end", time.Time{})
	if aerr != nil {
		return 0, 0, aerr
	}
	start, end = math.MinInt64, math.MaxInt64
	if !s.IsZero() {
		start = s.UnixMilli()
	}
	if !e.IsZero() {
		end = e.UnixMilli()
	}
	if end < start {
		return 0, 0, badData("end: before start")
	}
	return start, end, nil
}

func (a *API) matchers(r *http.Request) ([][]*labels.Matcher, *apiError) {
	raw := r.Form["match[]"]
	if len(raw) > maxMatchers {
		return nil, badData("match[]: more than %d selectors", maxMatchers)
	}
	sets, err := a.parser.ParseMetricSelectors(raw)
	if err != nil {
		return nil, badData("match[]: %v", err)
	}
	for i, set := range sets {
		if !slices.ContainsFunc(set, func(m *labels.Matcher) bool { return !m.Matches("") }) {
			return nil, badData("match[] %q: must contain at least one non-empty matcher", raw[i])
		}
	}
	return sets, nil
}

func limitParam(r *http.Request) (int, *apiError) {
	s := r.FormValue("limit")
	if s == "" {
		return maxResults, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, badData("limit: %q is not a non-negative integer", s)
	}
	if n == 0 || n > maxResults {
		n = maxResults
	}
	return n, nil
}

// selection is what the metadata endpoints (labels, label values, series)
// read from a request: the time range, the match[] sets and the limit, with
// a querier over that range that the caller closes.
type selection struct {
	start, end int64
	sets       [][]*labels.Matcher
	limit      int
	q          storage.Querier
}

func (a *API) selection(r *http.Request) (selection, *apiError) {
	var sel selection
	var aerr *apiError
	if sel.start, sel.end, aerr = a.selectRange(r); aerr != nil {
		return sel, aerr
	}
	if sel.sets, aerr = a.matchers(r); aerr != nil {
		return sel, aerr
	}
	if sel.limit, aerr = limitParam(r); aerr != nil {
		return sel, aerr
	}
	q, err := a.o.Queryable.Querier(sel.start, sel.end)
	if err != nil {
		return sel, &apiError{"internal", http.StatusInternalServerError, err}
	}
	sel.q = q
	return sel, nil
}

// labelQuery runs fn for each matcher set (or once without), and merges
// the sorted answers.
func (a *API) labelQuery(r *http.Request, fn func(ctx context.Context, q storage.Querier, ms []*labels.Matcher) ([]string, annotations.Annotations, error)) (any, []string, *apiError) {
	sel, aerr := a.selection(r)
	if aerr != nil {
		return nil, nil, aerr
	}
	defer sel.q.Close()
	q, sets, limit := sel.q, sel.sets, sel.limit
	if len(sets) == 0 {
		sets = [][]*labels.Matcher{nil}
	}
	seen := map[string]bool{}
	var (
		all   []string
		warns annotations.Annotations
	)
	for _, ms := range sets {
		vals, ws, err := fn(r.Context(), q, ms)
		warns.Merge(ws)
		if err != nil {
			return nil, nil, &apiError{"execution", http.StatusUnprocessableEntity, err}
		}
		for _, v := range vals {
			if !seen[v] {
				seen[v] = true
				all = append(all, v)
			}
		}
	}
	slices.Sort(all)
	w, _ := warns.AsStrings("", 10, 0)
	if len(all) > limit {
		all = all[:limit]
		w = append(w, "results truncated due to limit")
	}
	if all == nil {
		all = []string{}
	}
	return all, w, nil
}

func (a *API) labelNames(r *http.Request) (any, []string, *apiError) {
	return a.labelQuery(r, func(ctx context.Context, q storage.Querier, ms []*labels.Matcher) ([]string, annotations.Annotations, error) {
		return q.LabelNames(ctx, nil, ms...)
	})
}

func (a *API) labelValues(r *http.Request) (any, []string, *apiError) {
	name := r.PathValue("name")
	if !model.UTF8Validation.IsValidLabelName(name) {
		return nil, nil, badData("label name %q is not valid", name)
	}
	return a.labelQuery(r, func(ctx context.Context, q storage.Querier, ms []*labels.Matcher) ([]string, annotations.Annotations, error) {
		return q.LabelValues(ctx, name, nil, ms...)
	})
}

func (a *API) series(r *http.Request) (any, []string, *apiError) {
	sel, aerr := a.selection(r)
	if aerr != nil {
		return nil, nil, aerr
	}
	defer sel.q.Close()
	q, sets, limit := sel.q, sel.sets, sel.limit
	if len(sets) == 0 {
		return nil, nil, badData("match[]: no match[] parameter provided")
	}
	hints := &storage.SelectHints{Start: sel.start, End: sel.end, Func: "series"} // series only, no samples
	var sss []storage.SeriesSet
	for _, ms := range sets {
		sss = append(sss, q.Select(r.Context(), true, hints, ms...))
	}
	set := storage.NewMergeSeriesSet(sss, 0, storage.ChainedSeriesMerge)
	out := []labels.Labels{}
	var w []string
	for set.Next() {
		if len(out) == limit {
			w = append(w, "results truncated due to limit")
			break
		}
		out = append(out, set.At().Labels())
	}
	if err := set.Err(); err != nil {
		return nil, nil, &apiError{"execution", http.StatusUnprocessableEntity, err}
	}
	ws, _ := set.Warnings().AsStrings("", 10, 0)
	return out, append(w, ws...), nil
}

// parseTimeParam reads a time as the Prometheus API does: unix seconds
// (with a fraction) or RFC 3339. Missing gives def.
func parseTimeParam(r *http.Request, name string, def time.Time) (time.Time, *apiError) {
	s := r.FormValue(name)
	if s == "" {
		return def, nil
	}
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		if math.IsNaN(f) || math.IsInf(f, 0) || math.Abs(f) > 1e13 {
			return time.Time{}, badData("%s: %q is out of range", name, s)
		}
		sec, frac := math.Modf(f)
		return time.Unix(int64(sec), int64(math.Round(frac*1000))*int64(time.Millisecond)).UTC(), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	return time.Time{}, badData("%s: cannot parse %q as unix seconds or RFC 3339", name, s)
}

// parseDuration reads float seconds or a Prometheus duration ("15s", "1h30m").
func parseDuration(s string) (time.Duration, error) {
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		ns := f * float64(time.Second)
		if math.IsNaN(ns) || ns >= math.MaxInt64 || ns < math.MinInt64 {
			return 0, fmt.Errorf("%q overflows a duration", s)
		}
		return time.Duration(ns), nil
	}
	d, err := model.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("cannot parse %q as seconds or a duration", s)
	}
	return time.Duration(d), nil
}
