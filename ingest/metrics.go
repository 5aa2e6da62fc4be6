package ingest

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	messages       prometheus.Counter
	readings       prometheus.Counter
	samples        prometheus.Counter
	rejected       *prometheus.CounterVec
	dropped        *prometheus.CounterVec
	replayed       prometheus.Counter
	commitFailures prometheus.Counter
	commitSeconds  prometheus.Histogram
	batchSamples   prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		messages:       prometheus.NewCounter(prometheus.CounterOpts{Name: "fieldhub_ingest_messages_total", Help: "Telemetry messages received."}),
		readings:       prometheus.NewCounter(prometheus.CounterOpts{Name: "fieldhub_ingest_readings_total", Help: "Valid readings accepted for commit."}),
		samples:        prometheus.NewCounter(prometheus.CounterOpts{Name: "fieldhub_ingest_samples_committed_total", Help: "Numeric samples committed to the store."}),
		rejected:       prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fieldhub_ingest_rejected_total", Help: "Telemetry messages rejected and kept as dead letters, by device and reason."}, []string{"device", "reason"}),
		dropped:        prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fieldhub_ingest_dropped_total", Help: "Best-effort work dropped, by reason."}, []string{"reason"}),
		replayed:       prometheus.NewCounter(prometheus.CounterOpts{Name: "fieldhub_ingest_replayed_total", Help: "Dead letters replayed into the store."}),
		commitFailures: prometheus.NewCounter(prometheus.CounterOpts{Name: "fieldhub_ingest_commit_failures_total", Help: "Group commits that failed; their messages were not acknowledged."}),
		commitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "fieldhub_ingest_commit_duration_seconds", Help: "Time to commit one batch.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18)}),
		batchSamples: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "fieldhub_ingest_batch_samples", Help: "Samples per group commit.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 10)}),
	}
	for _, c := range []prometheus.Collector{m.messages, m.readings, m.samples, m.rejected, m.dropped, m.replayed, m.commitFailures, m.commitSeconds, m.batchSamples} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
