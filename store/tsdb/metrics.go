package tsdb

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	appended       prometheus.Counter
	tooOld         prometheus.Counter
	tooNew         prometheus.Counter
	duplicates     *prometheus.CounterVec
	appendFailures prometheus.Counter
	appendDuration prometheus.Histogram
	series         prometheus.Gauge
}

func newMetrics(reg *trackingRegisterer) (*metrics, error) {
	m := &metrics{
		appended: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fieldhub_tsdb_appended_samples_total",
			Help: "Samples written to the embedded TSDB.",
		}),
		tooOld: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fieldhub_tsdb_too_old_samples_total",
			Help: "Samples refused because they are older than the out-of-order window allows.",
		}),
		tooNew: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fieldhub_tsdb_too_new_samples_total",
			Help: "Samples refused because they are further ahead of the clock than allowed.",
		}),
		duplicates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fieldhub_tsdb_duplicate_samples_total",
			Help: "Samples not written because one with the same device, metric and timestamp is stored; value is same (a harmless redelivery) or different (the first value is kept).",
		}, []string{"value"}),
		appendFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fieldhub_tsdb_append_failures_total",
			Help: "Append calls that failed and wrote nothing.",
		}),
		appendDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "fieldhub_tsdb_append_duration_seconds",
			Help:    "Time an Append call takes, WAL commit and fsync included.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 12), // 100µs to ~6s
		}),
		series: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "fieldhub_tsdb_cached_series",
			Help: "Series whose labels and latest value are kept in memory.",
		}),
	}
	m.duplicates.WithLabelValues("same")
	m.duplicates.WithLabelValues("different")
	for _, c := range []prometheus.Collector{m.appended, m.tooOld, m.tooNew, m.duplicates, m.appendFailures, m.appendDuration, m.series} {
		if err := reg.Register(c); err != nil {
			reg.unregisterAll()
			return nil, err
		}
	}
	return m, nil
}

// trackingRegisterer registers into inner (if any) and remembers what it
// registered, so Close can unregister the metrics of this store and of its
// TSDB and the store can be opened again with the same registry.
type trackingRegisterer struct {
	inner prometheus.Registerer
	mu    sync.Mutex
	cs    []prometheus.Collector
}

func (r *trackingRegisterer) Register(c prometheus.Collector) error {
	if r.inner == nil {
		return nil
	}
	if err := r.inner.Register(c); err != nil {
		return err
	}
	r.mu.Lock()
	r.cs = append(r.cs, c)
	r.mu.Unlock()
	return nil
}

func (r *trackingRegisterer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

func (r *trackingRegisterer) Unregister(c prometheus.Collector) bool {
	if r.inner == nil {
		return false
	}
	return r.inner.Unregister(c)
}

func (r *trackingRegisterer) unregisterAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.cs {
		r.inner.Unregister(c)
	}
	r.cs = nil
}
