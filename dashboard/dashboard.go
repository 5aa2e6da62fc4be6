// Package dashboard serves fieldhub's HTTP side: the JSON API under
// /api/v1 (bearer API tokens or a web session), the live event stream
// (Server-Sent Events), the embedded web UI at /, and the operations
// endpoints /healthz, /readyz and /metrics.
//
// Every route is registered through one table (server.routes), which the
// OpenAPI test walks against openapi.json so the document stays true.
package dashboard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/fieldhub/fieldhub/ingest"
	"github.com/fieldhub/fieldhub/registry"
	"github.com/fieldhub/fieldhub/store"
	"github.com/fieldhub/fieldhub/telemetry"
)

// Registry is what the API needs of the device registry
// (*registry.Registry).
type Registry interface {
	AuthenticateAPIToken(ctx context.Context, token string) (registry.APIToken, bool, error)
	APITokens(ctx context.Context) ([]registry.APIToken, error)
	CreateAPIToken(ctx context.Context, name string) (registry.APIToken, string, error)
	DeleteAPIToken(ctx context.Context, id string) error

	Device(ctx context.Context, id string) (registry.Device, error)
	Devices(ctx context.Context, f registry.DeviceFilter) ([]registry.Device, error)
	CountDevices(ctx context.Context) (total, online int, err error)
	CreateDevice(ctx context.Context, spec registry.DeviceSpec) (registry.Device, string, error)
	DeleteDevice(ctx context.Context, id string) error
	RotateDeviceToken(ctx context.Context, id string) (string, error)

	DeadLetters(ctx context.Context, f registry.DeadLetterFilter) ([]registry.DeadLetter, error)
	DeadLetter(ctx context.Context, id int64) (registry.DeadLetter, error)
}

// Replayer re-ingests dead letters (*ingest.Pipeline).
type Replayer interface {
	Replay(ctx context.Context, id int64) error
}

// Info describes the hub to the UI and scripts (GET /api/v1/info).
type Info struct {
	Version string `json:"version,omitempty"`
	// MQTT, WS and TLS are the broker's bound listener addresses.
	MQTT string `json:"mqtt,omitempty"`
	WS   string `json:"ws,omitempty"`
	TLS  string `json:"tls,omitempty"`
	// Store is the telemetry backend: "tsdb" or "influx".
	Store string `json:"store,omitempty"`
}

// Deps are the parts the HTTP side serves from. Registry is required; a
// nil Store, Ingest or Events makes their routes answer 503.
type Deps struct {
	Registry Registry
	Store    store.Querier
	Ingest   Replayer
	// Commands serves the command and twin routes (commands.go); nil
	// leaves them out.
	Commands Commands
	// Events is the live event fan-out behind /api/v1/events and the
	// summary's rates.
	Events *Events
	// Types are the configured device types (units and ranges for the UI).
	Types map[string]*telemetry.DeviceType
	Info  Info
	// Metrics is served on /metrics; Registerer, if set, gets the HTTP
	// side's own metrics (fieldhub_http_*, fieldhub_events_*).
	Metrics    prometheus.Gatherer
	Registerer prometheus.Registerer
	Logger     *slog.Logger
	// Ready reports whether the hub can serve (nil = ready).
	Ready func() error
	Auth  AuthOptions
	// Heartbeat is the event stream's keep-alive interval (default 15s).
	Heartbeat time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Mounts are more handlers this server serves, e.g. the
	// Prometheus-compatible API (promapi) and the broker auth hook.
	Mounts []Mount
}

// Mount is a handler served at a path (a ServeMux path: one ending in "/"
// is a prefix) for the given methods. It gets the API's authentication
// (bearer token or session, with CSRF checks) unless Public: a public one
// checks credentials of its own.
type Mount struct {
	Methods []string
	Path    string
	Handler http.Handler
	Public  bool
}

// Route is one entry of the route table.
type Route struct {
	Method string
	Path   string
	// Public routes need no authentication (health, readiness, login).
	Public bool
}

type server struct {
	Deps
	mux      *http.ServeMux
	routes   []Route
	sessions *sessions
	logins   *loginLimiter
	m        *httpMetrics
	ui       http.Handler
}

// New returns the hub's HTTP handler.
func New(d Deps) http.Handler { return newServer(d) }

func newServer(d Deps) *server {
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Heartbeat <= 0 {
		d.Heartbeat = 15 * time.Second
	}
	if d.Metrics == nil {
		d.Metrics = prometheus.NewRegistry()
	}
	d.Auth = d.Auth.withDefaults()
	s := &server{
		Deps: d, mux: http.NewServeMux(),
		sessions: newSessions(d.Auth), logins: newLoginLimiter(d.Auth),
		ui: uiHandler(),
	}
	s.m = newHTTPMetrics(d.Registerer, d.Logger, s)

	s.public("GET /healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })
	s.public("GET /readyz", s.readyz)
	// /metrics needs a token: its labels name devices and their faults.
	// Prometheus sends one with `authorization: {credentials_file: ...}`.
	s.authed("GET /metrics", promhttp.HandlerFor(d.Metrics, promhttp.HandlerOpts{}).ServeHTTP)

	s.public("POST /api/v1/session", s.login)
	s.api("GET /api/v1/session", s.whoami)
	s.api("DELETE /api/v1/session", s.logout)

	s.api("GET /api/v1/info", s.info)
	s.api("GET /api/v1/summary", s.summary)
	s.api("GET /api/v1/types", s.types)
	s.api("GET /api/v1/events", s.events)

	s.api("GET /api/v1/devices", s.listDevices)
	s.api("POST /api/v1/devices", s.createDevice)
	s.api("GET /api/v1/devices/{id}", s.showDevice)
	s.api("DELETE /api/v1/devices/{id}", s.deleteDevice)
	s.api("POST /api/v1/devices/{id}/token", s.rotateToken)

	s.api("GET /api/v1/telemetry/latest", s.latestMany)
	s.api("GET /api/v1/devices/{id}/telemetry/latest", s.latest)
	s.api("GET /api/v1/devices/{id}/telemetry/{metric}", s.series)

	s.api("GET /api/v1/deadletters", s.deadLetters)
	s.api("GET /api/v1/deadletters/{id}", s.deadLetter)
	s.api("POST /api/v1/deadletters/{id}/replay", s.replay)

	s.api("GET /api/v1/tokens", s.listTokens)
	s.api("POST /api/v1/tokens", s.createToken)
	s.api("DELETE /api/v1/tokens/{id}", s.deleteToken)

	s.commandRoutes()
	for _, m := range d.Mounts {
		for _, method := range m.Methods {
			s.handle(method+" "+m.Path, m.Public, m.Handler.ServeHTTP)
		}
	}

	s.public("GET /api/v1/openapi.json", s.openapi)
	s.mux.HandleFunc("/api/", s.notFound)
	s.mux.Handle("GET /{$}", s.ui)
	s.mux.Handle("GET /assets/", s.ui)
	return s
}

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	s.mux.ServeHTTP(w, r)
}

// Routes lists the registered routes in registration order.
func (s *server) Routes() []Route { return append([]Route(nil), s.routes...) }

// api registers an authenticated API route. Cookie-authenticated requests
// that change state must carry the session's CSRF token.
func (s *server) api(pattern string, h http.HandlerFunc) { s.handle(pattern, false, h) }

// authed is api for routes outside /api/v1.
func (s *server) authed(pattern string, h http.HandlerFunc) { s.handle(pattern, false, h) }

// public registers a route that needs no authentication.
func (s *server) public(pattern string, h http.HandlerFunc) { s.handle(pattern, true, h) }

func (s *server) handle(pattern string, public bool, h http.HandlerFunc) {
	method, path, ok := strings.Cut(pattern, " ")
	if !ok {
		panic("dashboard: route pattern without a method: " + pattern)
	}
	s.routes = append(s.routes, Route{Method: method, Path: path, Public: public})
	requests := s.m.requests.MustCurryWith(prometheus.Labels{"route": pattern})
	duration := s.m.duration.WithLabelValues(pattern)
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			requests.WithLabelValues(strconv.Itoa(sw.code())).Inc()
			duration.Observe(time.Since(start).Seconds())
		}()
		if !public {
			p, ok := s.authenticate(sw, r)
			if !ok {
				return
			}
			r = r.WithContext(context.WithValue(r.Context(), principalKey{}, p))
		}
		h(sw, r)
	})
}

// statusWriter records the status for the request metrics. Unwrap keeps
// http.ResponseController (flush, write deadlines) working through it.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *statusWriter) code() int {
	if w.status == 0 {
		return http.StatusOK
	}
	return w.status
}

// notFound answers API paths no route matched: 405 with Allow when the
// path exists for other methods, 404 otherwise, both as JSON.
func (s *server) notFound(w http.ResponseWriter, r *http.Request) {
	var allow []string
	for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch} {
		if m == r.Method {
			continue
		}
		probe := r.Clone(r.Context())
		probe.Method = m
		if _, p := s.mux.Handler(probe); p != "" && p != "/api/" {
			allow = append(allow, m)
		}
	}
	if len(allow) > 0 {
		w.Header().Set("Allow", strings.Join(allow, ", "))
		writeError(w, http.StatusMethodNotAllowed, "method_not_allowed", fmt.Sprintf("%s is not allowed here (allowed: %s)", r.Method, strings.Join(allow, ", ")))
		return
	}
	writeError(w, http.StatusNotFound, "not_found", "no such API route")
}

func (s *server) readyz(w http.ResponseWriter, r *http.Request) {
	if s.Ready != nil {
		if err := s.Ready(); err != nil {
			writeError(w, http.StatusServiceUnavailable, "not_ready", err.Error())
			return
		}
	}
	w.Write([]byte("ready\n"))
}

func (s *server) info(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.Info)
}

// unavailable answers 503 when a dependency the route needs is not wired.
func unavailable(w http.ResponseWriter, what string) {
	writeError(w, http.StatusServiceUnavailable, "unavailable", what+" is not available in this process")
}

// LatestSample is one metric's newest value.
type LatestSample struct {
	Metric string  `json:"metric"`
	TS     int64   `json:"ts"`
	Value  float64 `json:"value"`
}

func fromSamples(samples []telemetry.Sample) []LatestSample {
	out := make([]LatestSample, 0, len(samples))
	for _, sm := range samples {
		out = append(out, LatestSample{Metric: sm.Metric, TS: sm.TS, Value: sm.Value})
	}
	return out
}

// device checks that the path's device exists.
func (s *server) device(w http.ResponseWriter, r *http.Request) (string, bool) {
	id := r.PathValue("id")
	if _, err := s.Registry.Device(r.Context(), id); errors.Is(err, registry.ErrNotFound) {
		writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("device %q does not exist", id))
		return "", false
	} else if err != nil {
		internalError(w, err)
		return "", false
	}
	return id, true
}

func (s *server) latest(w http.ResponseWriter, r *http.Request) {
	if s.Store == nil {
		unavailable(w, "the telemetry store")
		return
	}
	id, ok := s.device(w, r)
	if !ok {
		return
	}
	samples, err := s.Store.Latest(r.Context(), id)
	if err != nil {
		internalError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, fromSamples(samples))
}

// maxLatestDevices bounds GET /api/v1/telemetry/latest.
const maxLatestDevices = 200

// latestMany returns the latest values of several devices at once, for the
// rows of a device list in view.
func (s *server) latestMany(w http.ResponseWriter, r *http.Request) {
	if s.Store == nil {
		unavailable(w, "the telemetry store")
		return
	}
	ids := r.URL.Query()["device"]
	if len(ids) == 0 || len(ids) > maxLatestDevices {
		writeError(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("device: give 1 to %d device ids", maxLatestDevices))
		return
	}
	latest, err := s.latestOf(r.Context(), ids)
	if err != nil {
		internalError(w, err)
		return
	}
	out := make(map[string][]LatestSample, len(ids))
	for i, id := range ids {
		out[id] = latest[i]
	}
	writeJSON(w, http.StatusOK, map[string]any{"latest": out})
}

// latestOf fetches the latest values of devices, a few at a time: the
// embedded store answers from memory, a remote one per query.
func (s *server) latestOf(ctx context.Context, ids []string) ([][]LatestSample, error) {
	out := make([][]LatestSample, len(ids))
	errs := make([]error, len(ids))
	sem := make(chan struct{}, 8)
	done := make(chan struct{})
	for i, id := range ids {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; done <- struct{}{} }()
			samples, err := s.Store.Latest(ctx, id)
			out[i], errs[i] = fromSamples(samples), err
		}()
	}
	for range ids {
		<-done
	}
	return out, errors.Join(errs...)
}

// ParseTime accepts unix milliseconds, RFC 3339, or a duration before now
// ("15m" means 15 minutes ago).
func ParseTime(s string, now time.Time) (int64, error) {
	if ms, err := strconv.ParseInt(s, 10, 64); err == nil {
		return ms, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t.UnixMilli(), nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		return now.Add(-d).UnixMilli(), nil
	}
	return 0, fmt.Errorf("%q is not unix ms, RFC 3339 or a duration ago", s)
}

// maxBuckets bounds a bucketed series query: a chart needs ~1000 points,
// and a step far too small for the range is almost surely a mistake.
const maxBuckets = 11000

func (s *server) series(w http.ResponseWriter, r *http.Request) {
	if s.Store == nil {
		unavailable(w, "the telemetry store")
		return
	}
	id, ok := s.device(w, r)
	if !ok {
		return
	}
	q := store.SeriesQuery{Device: id, Metric: r.PathValue("metric")}
	now := s.Now()
	q.From, q.To = now.Add(-time.Hour).UnixMilli(), now.UnixMilli()
	v := r.URL.Query()
	var err error
	if f := v.Get("from"); f != "" {
		if q.From, err = ParseTime(f, now); err != nil {
			writeError(w, http.StatusBadRequest, "bad_request", "from: "+err.Error())
			return
		}
	}
	if t := v.Get("to"); t != "" {
		if q.To, err = ParseTime(t, now); err != nil {
			writeError(w, http.StatusBadRequest, "bad_request", "to: "+err.Error())
			return
		}
	}
	if st := v.Get("step"); st != "" {
		if q.Step, err = time.ParseDuration(st); err != nil || q.Step < time.Millisecond {
			writeError(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("step: %q is not a duration of at least 1ms", st))
			return
		}
	}
	if q.Agg, err = store.ParseAgg(v.Get("agg")); err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", "agg: "+err.Error())
		return
	}
	if q.To < q.From {
		writeError(w, http.StatusBadRequest, "bad_request", "to is before from")
		return
	}
	if q.Step > 0 && (q.To-q.From)/q.Step.Milliseconds() > maxBuckets {
		writeError(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("step: %s cuts the range into more than %d buckets; use a larger step", q.Step, maxBuckets))
		return
	}
	pts, err := s.Store.Series(r.Context(), q)
	if err != nil {
		internalError(w, err)
		return
	}
	if pts == nil {
		pts = []store.Point{}
	}
	writeJSON(w, http.StatusOK, pts)
}

// DeadLetter is the API form of a dead letter.
type DeadLetter struct {
	ID          int64      `json:"id"`
	Device      string     `json:"device"`
	Topic       string     `json:"topic"`
	Payload     string     `json:"payload"`
	Reason      string     `json:"reason"`
	Detail      string     `json:"detail"`
	ReceivedAt  time.Time  `json:"received_at"`
	ReplayedAt  *time.Time `json:"replayed_at,omitempty"`
	ReplayError string     `json:"replay_error,omitempty"`
}

// FromDeadLetter converts a registry dead letter to its API form.
func FromDeadLetter(d registry.DeadLetter) DeadLetter {
	out := DeadLetter{ID: d.ID, Device: d.Device, Topic: d.Topic, Payload: string(d.Payload), Reason: d.Reason,
		Detail: d.Detail, ReceivedAt: d.ReceivedAt, ReplayError: d.ReplayError}
	if !d.ReplayedAt.IsZero() {
		t := d.ReplayedAt
		out.ReplayedAt = &t
	}
	return out
}

// DeadLetterPage is the answer of GET /api/v1/deadletters.
type DeadLetterPage struct {
	DeadLetters []DeadLetter `json:"dead_letters"`
	// Next is the cursor of the next page (pass it as ?after=), "" after
	// the last page.
	Next string `json:"next"`
}

func (s *server) deadLetters(w http.ResponseWriter, r *http.Request) {
	v := r.URL.Query()
	f := registry.DeadLetterFilter{Device: v.Get("device"), Reason: v.Get("reason"), Limit: 100}
	switch v.Get("replayed") {
	case "", "false":
	case "true":
		f.IncludeReplayed = true
	default:
		writeError(w, http.StatusBadRequest, "bad_request", "replayed: want true or false")
		return
	}
	if a := v.Get("after"); a != "" {
		id, err := strconv.ParseInt(a, 10, 64)
		if err != nil || id < 0 {
			writeError(w, http.StatusBadRequest, "bad_request", "after: not a dead letter id")
			return
		}
		f.AfterID = id
	}
	if l := v.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > 1000 {
			writeError(w, http.StatusBadRequest, "bad_request", "limit: must be 1..1000")
			return
		}
		f.Limit = n
	}
	dls, err := s.Registry.DeadLetters(r.Context(), f)
	if err != nil {
		internalError(w, err)
		return
	}
	out := DeadLetterPage{DeadLetters: make([]DeadLetter, 0, len(dls))}
	for _, d := range dls {
		out.DeadLetters = append(out.DeadLetters, FromDeadLetter(d))
	}
	if len(dls) == f.Limit {
		out.Next = strconv.FormatInt(dls[len(dls)-1].ID, 10)
	}
	writeJSON(w, http.StatusOK, out)
}

func deadLetterID(w http.ResponseWriter, r *http.Request) (int64, bool) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", "id: not a dead letter id")
		return 0, false
	}
	return id, true
}

func (s *server) deadLetter(w http.ResponseWriter, r *http.Request) {
	id, ok := deadLetterID(w, r)
	if !ok {
		return
	}
	dl, err := s.Registry.DeadLetter(r.Context(), id)
	if errors.Is(err, registry.ErrNotFound) {
		writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("dead letter %d does not exist", id))
		return
	} else if err != nil {
		internalError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, FromDeadLetter(dl))
}

// ReplayResult is the answer of a successful replay.
type ReplayResult struct {
	ID       int64 `json:"id"`
	Replayed bool  `json:"replayed"`
}

func (s *server) replay(w http.ResponseWriter, r *http.Request) {
	if s.Ingest == nil {
		unavailable(w, "ingest")
		return
	}
	id, ok := deadLetterID(w, r)
	if !ok {
		return
	}
	err := s.Ingest.Replay(r.Context(), id)
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, ReplayResult{ID: id, Replayed: true})
	case errors.Is(err, registry.ErrNotFound):
		writeError(w, http.StatusNotFound, "not_found", err.Error())
	case errors.Is(err, ingest.ErrRejected):
		writeError(w, http.StatusUnprocessableEntity, "still_invalid", err.Error())
	default:
		internalError(w, err)
	}
}

// APIError is the JSON body of every error response.
type APIError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, struct {
		Error APIError `json:"error"`
	}{APIError{code, msg}})
}

func internalError(w http.ResponseWriter, err error) {
	if errors.Is(err, context.Canceled) {
		// The client left; nobody reads the answer.
		writeError(w, 499, "cancelled", err.Error())
		return
	}
	writeError(w, http.StatusInternalServerError, "internal", err.Error())
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	_ = enc.Encode(v)
}
