package dashboard

import (
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
)

// httpMetrics are the HTTP side's own metrics.
type httpMetrics struct {
	requests     *prometheus.CounterVec
	duration     *prometheus.HistogramVec
	authFailures *prometheus.CounterVec
	logins       *prometheus.CounterVec
	sseDropped   prometheus.Counter
}

// newHTTPMetrics registers on reg when it is set; a registration failure
// (e.g. two handlers on one registry) is logged, and the handler still
// works with unregistered metrics.
func newHTTPMetrics(reg prometheus.Registerer, log *slog.Logger, s *server) *httpMetrics {
	m := &httpMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fieldhub_http_requests_total",
			Help: "HTTP requests by route pattern and status code (4xx are bad input or refused auth).",
		}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "fieldhub_http_request_duration_seconds",
			Help:    "HTTP request duration by route pattern (event streams: the stream's lifetime).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10, 60},
		}, []string{"route"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fieldhub_http_auth_failures_total",
			Help: "Refused API requests by reason: missing, malformed, invalid_token, session_expired, csrf, origin.",
		}, []string{"reason"}),
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fieldhub_http_logins_total",
			Help: "Web UI login attempts by result: ok, invalid, bad_request, forbidden, rate_limited.",
		}, []string{"result"}),
		sseDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fieldhub_events_streams_dropped_total",
			Help: "Live event streams cut off because the client fell behind.",
		}),
	}
	if reg == nil {
		return m
	}
	cs := []prometheus.Collector{m.requests, m.duration, m.authFailures, m.logins, m.sseDropped,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "fieldhub_http_sessions",
			Help: "Open web UI sessions.",
		}, func() float64 { return float64(s.sessions.count()) }),
	}
	if ev := s.Events; ev != nil {
		cs = append(cs,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "fieldhub_events_subscribers",
				Help: "Open live event subscriptions.",
			}, func() float64 { return float64(ev.Stats().Subscribers) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "fieldhub_events_published_total",
				Help: "Live events published to at least one subscriber.",
			}, func() float64 { return float64(ev.Stats().Published) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "fieldhub_events_subscribers_dropped_total",
				Help: "Live event subscribers dropped because their buffer was full.",
			}, func() float64 { return float64(ev.Stats().Dropped) }),
		)
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			log.Warn("register dashboard metric", "err", err)
		}
	}
	return m
}
