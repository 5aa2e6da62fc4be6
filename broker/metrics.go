package broker

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	connected      prometheus.Gauge
	received       prometheus.Counter
	sent           prometheus.Counter
	authFailures   *prometheus.CounterVec // reason
	aclDenied      *prometheus.CounterVec // action
	dropped        *prometheus.CounterVec // reason
	closed         *prometheus.CounterVec // reason
	handlerSeconds prometheus.Histogram
	presenceErrors *prometheus.CounterVec // op
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "fieldhub_mqtt_clients_connected",
			Help: "Devices with an established MQTT session.",
		}),
		received: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fieldhub_mqtt_messages_received_total",
			Help: "PUBLISH packets received from devices.",
		}),
		sent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fieldhub_mqtt_messages_sent_total",
			Help: "PUBLISH packets written to devices.",
		}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fieldhub_mqtt_auth_failures_total",
			Help: "Refused CONNECTs by reason (anonymous, no_password, invalid_username, client_id_mismatch, bad_credentials, error).",
		}, []string{"reason"}),
		aclDenied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fieldhub_mqtt_acl_denied_total",
			Help: "Topic ACL denials by action (publish, subscribe, will).",
		}, []string{"action"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fieldhub_mqtt_messages_dropped_total",
			Help: "Messages dropped by reason (queue_full: client's outbound queue full; inflight_dropped: unacknowledged QoS>0 message abandoned; handler_error: QoS 0 message the handler could not take).",
		}, []string{"reason"}),
		closed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fieldhub_mqtt_connections_closed_total",
			Help: "Closed client connections by reason (connect_timeout, packet_too_large, keepalive_timeout, auth_failed, ...).",
		}, []string{"reason"}),
		handlerSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "fieldhub_mqtt_handler_duration_seconds",
			Help:    "Time the message handler held a device's publish (for QoS 1: until stored).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 9),
		}),
		presenceErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fieldhub_mqtt_presence_errors_total",
			Help: "Failed presence writes to the registry by operation (set_presence, touch_last_seen).",
		}, []string{"op"}),
	}
	// Pre-create the label values operators alert on, so they read 0.
	for _, r := range []string{"anonymous", "no_password", "invalid_username", "client_id_mismatch", "bad_credentials", "error"} {
		m.authFailures.WithLabelValues(r)
	}
	for _, a := range []action{actPublish, actRead, actWill} {
		m.aclDenied.WithLabelValues(a.String())
	}
	for _, r := range []string{"connect_timeout", "packet_too_large"} {
		m.closed.WithLabelValues(r)
	}
	if reg == nil {
		return m, nil
	}
	var errs []error
	for _, c := range []prometheus.Collector{m.connected, m.received, m.sent, m.authFailures, m.aclDenied,
		m.dropped, m.closed, m.handlerSeconds, m.presenceErrors} {
		if err := reg.Register(c); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("register broker metrics: %w", err)
	}
	return m, nil
}
