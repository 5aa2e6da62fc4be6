// Package influx is fieldhub's InfluxDB backend for store.Store: it writes
// through the InfluxDB v2 write API (line protocol) and reads with Flux. It
// works with InfluxDB 1.8+ (its v2-compatible API, bucket "db/rp"), InfluxDB
// 2.x/3.x and InfluxDB Cloud.
//
// # Data model (what Grafana users query)
//
// One measurement (default "telemetry"), one tag "device" holding the device
// id, one field per metric named after the metric, always a float (booleans
// arrive as 0/1), timestamps in milliseconds. For example the reading
// {"ts": 1733300000123, "metrics": {"temperature": 21.5}} of device
// "boiler-1" is stored as the line
//
//	telemetry,device=boiler-1 temperature=21.5 1733300000123
//
// A point is identified by (measurement, device, metric, timestamp), which is
// fieldhub's sample identity, so writing a sample twice stores it once (the
// later value wins). In Flux:
//
//	from(bucket: "fieldhub/autogen")
//	  |> range(start: -1h)
//	  |> filter(fn: (r) => r._measurement == "telemetry" and r.device == "boiler-1" and r._field == "temperature")
//
// and in InfluxQL (1.x): SELECT "temperature" FROM "telemetry" WHERE "device" = 'boiler-1'.
//
// Values are written without the integer suffix ("21", not "21i"), which
// line protocol reads as a float: InfluxDB fixes a field's type on its first
// write, so writing every value as a float avoids type conflicts between a
// reading of 21 and one of 21.5.
//
// Samples that InfluxDB cannot hold are refused before sending, not
// mangled: a device or metric name that is empty, not UTF-8, or holds a
// backslash or a control character (line protocol cannot carry them
// faithfully), the metric name "time" (InfluxDB drops it silently), a NaN
// or infinite value, a timestamp outside InfluxDB's range (years 1677-2262).
//
// # Outage policy: back-pressure
//
// Append blocks until InfluxDB has acknowledged the whole batch (HTTP 2xx).
// When a write fails in a way that may heal (connection refused, a timeout,
// HTTP 5xx, 408 or 429, and 401, 403 or 404: a wrong token or a missing
// bucket is the hub's configuration, which an operator fixes, not the
// samples' fault) Append sends the same batch again after an
// exponential backoff with jitter (Options.RetryBackoff, honouring
// Retry-After), until it succeeds or the caller's context is cancelled, in
// which case it returns the error. Because ingest appends from its group
// commit and devices wait for their PUBACK, a down InfluxDB withholds
// PUBACKs: nothing acknowledged is lost, memory stays bounded by connections
// × inflight messages, and the hub keeps accepting connections. Writes are
// idempotent, so resending a batch that InfluxDB stored but failed to
// acknowledge is harmless.
//
// Other answers (4xx: a field type conflict, a value it cannot hold) cannot heal by resending, so Append does not retry them: it
// returns a *store.RejectedError naming the refused samples, so ingest can
// dead-letter them. On a field type conflict InfluxDB drops only the
// conflicting points and names one field; Append then resends the batch
// without that metric until the rest is stored, so the error lists exactly
// the samples of the conflicting metrics.
//
// Latest and Series always ask InfluxDB (no cache), so they are right after a
// restart and when several hubs write to one InfluxDB.
package influx

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	influxdb2 "github.com/influxdata/influxdb-client-go/v2"
	"github.com/influxdata/influxdb-client-go/v2/api"
	"github.com/prometheus/client_golang/prometheus"
)

// Backoff bounds the wait between two attempts of a failed write: it starts
// at Min and doubles up to Max, with jitter.
type Backoff struct {
	Min, Max time.Duration
}

// Options configures Open. URL and Bucket are required.
type Options struct {
	// URL is the server's base URL, e.g. http://127.0.0.1:8086.
	URL string
	// Token is the API token; with InfluxDB 1.8 "username:password", or
	// anything when auth is disabled. Empty sends no Authorization header.
	Token string
	// Org is required by InfluxDB 2.x and ignored by 1.8.
	Org string
	// Bucket is the bucket; with InfluxDB 1.8 "database/retention-policy".
	Bucket string
	// Measurement holds all samples; default "telemetry".
	Measurement string
	// WriteTimeout bounds one write request; default 10s.
	WriteTimeout time.Duration
	// RetryBackoff paces retries of failed writes; default 100ms to 10s.
	RetryBackoff Backoff
	// Logger defaults to discarding.
	Logger *slog.Logger
	// Registerer receives the fieldhub_influx_* metrics; nil registers none.
	Registerer prometheus.Registerer
	// HTTPClient is optional (e.g. for TLS settings). It should have no
	// overall Timeout: writes are bounded by WriteTimeout and queries by
	// their context.
	HTTPClient *http.Client
}

// Defaults.
const (
	DefaultMeasurement  = "telemetry"
	DefaultWriteTimeout = 10 * time.Second
	DefaultBackoffMin   = 100 * time.Millisecond
	DefaultBackoffMax   = 10 * time.Second
)

// Store is the InfluxDB backend. It is safe for concurrent use.
type Store struct {
	opts    Options
	log     *slog.Logger
	client  influxdb2.Client
	writer  api.WriteAPIBlocking
	querier api.QueryAPI
	m       *metrics
	// meas is the measurement, escaped for line protocol.
	meas string

	ownHTTP *http.Client // created here, so closed here

	closeOnce sync.Once
	closed    chan struct{} // stops retry loops on Close
}

// Open checks the options and connects. It does not require the server to
// be up, so the hub starts while InfluxDB is down; it logs whether a ping
// succeeded.
func Open(ctx context.Context, opts Options) (*Store, error) {
	if err := opts.normalize(); err != nil {
		return nil, fmt.Errorf("open influx store: %w", err)
	}
	s := &Store{
		opts:   opts,
		log:    opts.Logger,
		meas:   escapeMeasurement(opts.Measurement),
		closed: make(chan struct{}),
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, fmt.Errorf("open influx store: %w", err)
	}
	s.m = m

	hc := opts.HTTPClient
	if hc == nil {
		hc = &http.Client{Transport: &http.Transport{
			Proxy:               http.ProxyFromEnvironment,
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout: 5 * time.Second,
			MaxIdleConns:        32,
			MaxIdleConnsPerHost: 32,
			IdleConnTimeout:     90 * time.Second,
		}}
		s.ownHTTP = hc
	}
	co := influxdb2.DefaultOptions().
		SetHTTPClient(hc).
		SetPrecision(time.Millisecond).
		SetApplicationName("fieldhub").
		SetLogLevel(0) // the library's own logger: errors only; we log ourselves
	s.client = influxdb2.NewClientWithOptions(opts.URL, opts.Token, co)
	s.writer = s.client.WriteAPIBlocking(opts.Org, opts.Bucket)
	s.querier = s.client.QueryAPI(opts.Org)

	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := s.client.Ping(pctx); err != nil {
		s.m.up.Set(0)
		s.log.Warn("influx not reachable yet; writes will wait for it", "url", opts.URL, "err", err)
	} else {
		s.m.up.Set(1)
		s.log.Info("influx reachable", "url", opts.URL, "bucket", opts.Bucket, "measurement", opts.Measurement)
	}
	return s, nil
}

func (o *Options) normalize() error {
	if o.URL == "" {
		return errors.New("url: required")
	}
	u, err := url.Parse(o.URL)
	if err != nil {
		return fmt.Errorf("url: %w", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("url %q: want http(s)://host:port", o.URL)
	}
	if o.Bucket == "" {
		return errors.New("bucket: required")
	}
	if o.Measurement == "" {
		o.Measurement = DefaultMeasurement
	}
	if err := checkName(o.Measurement); err != nil {
		return fmt.Errorf("measurement: %w", err)
	}
	if o.WriteTimeout < 0 {
		return fmt.Errorf("write timeout %s: must not be negative", o.WriteTimeout)
	}
	if o.WriteTimeout == 0 {
		o.WriteTimeout = DefaultWriteTimeout
	}
	if o.RetryBackoff.Min < 0 || o.RetryBackoff.Max < 0 {
		return fmt.Errorf("retry backoff %s..%s: must not be negative", o.RetryBackoff.Min, o.RetryBackoff.Max)
	}
	if o.RetryBackoff.Min == 0 {
		o.RetryBackoff.Min = DefaultBackoffMin
	}
	if o.RetryBackoff.Max == 0 {
		o.RetryBackoff.Max = max(DefaultBackoffMax, o.RetryBackoff.Min)
	}
	if o.RetryBackoff.Min > o.RetryBackoff.Max {
		return fmt.Errorf("retry backoff: min %s exceeds max %s", o.RetryBackoff.Min, o.RetryBackoff.Max)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Close stops retrying writes, releases the client and unregisters the
// metrics. Appends still retrying return an error.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		close(s.closed)
		s.client.Close()
		if s.ownHTTP != nil {
			s.ownHTTP.CloseIdleConnections()
		}
		s.m.unregister()
	})
	return nil
}

// metrics are the fieldhub_influx_* collectors.
type metrics struct {
	reg            prometheus.Registerer
	failures       *prometheus.CounterVec
	retries        prometheus.Counter
	written        prometheus.Counter
	rejected       *prometheus.CounterVec
	duration       prometheus.Histogram
	up             prometheus.Gauge
	queryFailures  prometheus.Counter
	all            []prometheus.Collector
	registeredUpTo int
}

// Failure kinds of fieldhub_influx_write_failures_total.
const (
	kindConnection = "connection" // no HTTP answer: refused, reset, DNS
	kindTimeout    = "timeout"    // WriteTimeout elapsed, or HTTP 408
	kindServer     = "server"     // HTTP 5xx
	kindThrottled  = "throttled"  // HTTP 429
	kindConfig     = "config"     // HTTP 401, 403, 404: wrong token or missing bucket, retried until an operator fixes it
	kindRejected   = "rejected"   // other 4xx: not retried
)

// Reasons of fieldhub_influx_points_rejected_total.
const (
	reasonInvalid = "invalid" // refused before sending (name, value, time)
	reasonRefused = "refused" // refused by InfluxDB (4xx)
)

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		reg: reg,
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fieldhub_influx_write_failures_total",
			Help: "Failed write requests to InfluxDB, by kind: connection, timeout, server (5xx), throttled (429), config (401/403/404, retried), rejected (other 4xx, not retried).",
		}, []string{"kind"}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fieldhub_influx_write_retries_total",
			Help: "Write requests to InfluxDB sent again after a failure that may heal.",
		}),
		written: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fieldhub_influx_points_written_total",
			Help: "Samples acknowledged by InfluxDB.",
		}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fieldhub_influx_points_rejected_total",
			Help: "Samples refused for good, by reason: invalid (not sendable: name, value or time), refused (by InfluxDB).",
		}, []string{"reason"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "fieldhub_influx_write_duration_seconds",
			Help:    "Duration of one write request to InfluxDB, failed ones included.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15), // 1ms .. 16s
		}),
		up: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "fieldhub_influx_up",
			Help: "1 when the last request to InfluxDB got an answer, 0 when it could not be reached or failed with 5xx.",
		}),
		queryFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fieldhub_influx_query_failures_total",
			Help: "Failed Flux queries.",
		}),
	}
	for _, k := range []string{kindConnection, kindTimeout, kindServer, kindThrottled, kindConfig, kindRejected} {
		m.failures.WithLabelValues(k)
	}
	for _, r := range []string{reasonInvalid, reasonRefused} {
		m.rejected.WithLabelValues(r)
	}
	m.all = []prometheus.Collector{m.failures, m.retries, m.written, m.rejected, m.duration, m.up, m.queryFailures}
	if reg == nil {
		return m, nil
	}
	for _, c := range m.all {
		if err := reg.Register(c); err != nil {
			m.unregister()
			return nil, fmt.Errorf("register metrics: %w", err)
		}
		m.registeredUpTo++
	}
	return m, nil
}

func (m *metrics) unregister() {
	if m.reg == nil {
		return
	}
	for _, c := range m.all[:m.registeredUpTo] {
		m.reg.Unregister(c)
	}
	m.registeredUpTo = 0
}
