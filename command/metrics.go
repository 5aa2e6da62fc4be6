package command

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	final          *prometheus.CounterVec
	roundTrip      prometheus.Histogram
	repliesIgnored *prometheus.CounterVec
	rejected       *prometheus.CounterVec
	twinRejected   *prometheus.CounterVec
	publishErrors  prometheus.Counter
	changesDropped prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, pending func() float64) (*metrics, error) {
	m := &metrics{
		final: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fieldhub_commands_total",
			Help: "Commands that reached a final state, by state (succeeded, failed, expired, cancelled).",
		}, []string{"state"}),
		roundTrip: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "fieldhub_command_round_trip_seconds",
			Help:    "Time from a command's creation to the device's reply (succeeded or failed).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 3600},
		}),
		repliesIgnored: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fieldhub_command_replies_ignored_total",
			Help: "Device replies not applied, by reason (malformed, unknown, foreign, not_sent, duplicate, late).",
		}, []string{"reason"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fieldhub_command_requests_rejected_total",
			Help: "Send requests refused, by reason (invalid_device, invalid_name, invalid_params, invalid_timeout, invalid_key, invalid, unknown_device).",
		}, []string{"reason"}),
		twinRejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fieldhub_twin_rejected_total",
			Help: "Twin documents refused, by reason (malformed, invalid, foreign, unknown_device, desired_invalid).",
		}, []string{"reason"}),
		publishErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fieldhub_command_publish_errors_total",
			Help: "Commands and desired twins the broker refused to publish (retried on the device's next subscribe).",
		}),
		changesDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fieldhub_command_changes_dropped_total",
			Help: "Command changes not passed to a slow listener (live views).",
		}),
	}
	for _, s := range []string{"succeeded", "failed", "expired", "cancelled"} {
		m.final.WithLabelValues(s)
	}
	if reg == nil {
		return m, nil
	}
	cs := []prometheus.Collector{m.final, m.roundTrip, m.repliesIgnored, m.rejected, m.twinRejected, m.publishErrors, m.changesDropped,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "fieldhub_commands_pending",
			Help: "Commands not yet final (queued, sent or delivered) with a running expiry timer.",
		}, pending),
	}
	var errs []error
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return m, nil
}
