// Package dashboard serves fieldhub's HTTP side: the JSON API under
// /api/v1 (bearer API tokens), the operations endpoints /healthz, /readyz
// and /metrics.
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
)

// Registry is what the API needs of the device registry.
type Registry interface {
	AuthenticateAPIToken(ctx context.Context, token string) (registry.APIToken, bool, error)
	Device(ctx context.Context, id string) (registry.Device, error)
	DeadLetters(ctx context.Context, f registry.DeadLetterFilter) ([]registry.DeadLetter, error)
}

// Replayer re-ingests dead letters.
type Replayer interface {
	Replay(ctx context.Context, id int64) error
}

// Deps are the parts the HTTP side serves from.
type Deps struct {
	Registry Registry
	Store    store.Querier
	Ingest   Replayer
	// Commands serves the command and twin routes (commands.go); nil
	// leaves them out.
	Commands Commands
	Metrics  prometheus.Gatherer
	Logger   *slog.Logger
	// Ready reports whether the hub can serve (nil = ready).
	Ready func() error
}

type server struct {
	Deps
	mux *http.ServeMux
}

// New returns the hub's HTTP handler.
func New(d Deps) http.Handler {
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	s := &server{Deps: d, mux: http.NewServeMux()}
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })
	s.mux.HandleFunc("GET /readyz", s.readyz)
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(d.Metrics, promhttp.HandlerOpts{}))

	s.api("GET /api/v1/devices/{id}/telemetry/latest", s.latest)
	s.api("GET /api/v1/devices/{id}/telemetry/{metric}", s.series)
	s.api("GET /api/v1/deadletters", s.deadLetters)
	s.api("POST /api/v1/deadletters/{id}/replay", s.replay)
	s.commandRoutes()
	s.mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "not_found", "no such API route")
	})
	return s.mux
}

// api registers an authenticated API route.
func (s *server) api(pattern string, h http.HandlerFunc) {
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || tok == "" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="fieldhub"`)
			writeError(w, http.StatusUnauthorized, "unauthorized", "a bearer API token is required")
			return
		}
		if _, ok, err := s.Registry.AuthenticateAPIToken(r.Context(), tok); err != nil {
			writeError(w, http.StatusInternalServerError, "internal", "authenticate: "+err.Error())
			return
		} else if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="fieldhub", error="invalid_token"`)
			writeError(w, http.StatusUnauthorized, "unauthorized", "the API token is not valid")
			return
		}
		h(w, r)
	})
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

// LatestSample is one metric's newest value.
type LatestSample struct {
	Metric string  `json:"metric"`
	TS     int64   `json:"ts"`
	Value  float64 `json:"value"`
}

func (s *server) device(w http.ResponseWriter, r *http.Request) (string, bool) {
	id := r.PathValue("id")
	if _, err := s.Registry.Device(r.Context(), id); errors.Is(err, registry.ErrNotFound) {
		writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("device %q does not exist", id))
		return "", false
	} else if err != nil {
		writeError(w, http.StatusInternalServerError, "internal", err.Error())
		return "", false
	}
	return id, true
}

func (s *server) latest(w http.ResponseWriter, r *http.Request) {
	id, ok := s.device(w, r)
	if !ok {
		return
	}
	samples, err := s.Store.Latest(r.Context(), id)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "internal", err.Error())
		return
	}
	out := make([]LatestSample, 0, len(samples))
	for _, sm := range samples {
		out = append(out, LatestSample{Metric: sm.Metric, TS: sm.TS, Value: sm.Value})
	}
	writeJSON(w, http.StatusOK, out)
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

func (s *server) series(w http.ResponseWriter, r *http.Request) {
	id, ok := s.device(w, r)
	if !ok {
		return
	}
	q := store.SeriesQuery{Device: id, Metric: r.PathValue("metric")}
	now := time.Now()
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
		if q.Step, err = time.ParseDuration(st); err != nil || q.Step <= 0 {
			writeError(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("step: %q is not a positive duration", st))
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
	pts, err := s.Store.Series(r.Context(), q)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "internal", err.Error())
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

func (s *server) deadLetters(w http.ResponseWriter, r *http.Request) {
	v := r.URL.Query()
	f := registry.DeadLetterFilter{Device: v.Get("device"), Reason: v.Get("reason"), IncludeReplayed: v.Get("replayed") == "true"}
	if a := v.Get("after"); a != "" {
		id, err := strconv.ParseInt(a, 10, 64)
		if err != nil {
			writeError(w, http.StatusBadRequest, "bad_request", "after: not an id")
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
		writeError(w, http.StatusInternalServerError, "internal", err.Error())
		return
	}
	out := make([]DeadLetter, 0, len(dls))
	for _, d := range dls {
		out = append(out, FromDeadLetter(d))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *server) replay(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", "id: not a dead letter id")
		return
	}
	err = s.Ingest.Replay(r.Context(), id)
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, map[string]any{"id": id, "replayed": true})
	case errors.Is(err, registry.ErrNotFound):
		writeError(w, http.StatusNotFound, "not_found", err.Error())
	case errors.Is(err, ingest.ErrRejected):
		writeError(w, http.StatusUnprocessableEntity, "still_invalid", err.Error())
	default:
		writeError(w, http.StatusInternalServerError, "internal", err.Error())
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

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	_ = enc.Encode(v)
}
