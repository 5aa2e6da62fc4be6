package devicesim

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Stats counts what devices did and which faults they injected. Fault
// counters count messages actually handed to the MQTT client, so a test can
// compare them with what the hub rejected or absorbed.
type Stats struct {
	Readings       uint64 // readings sampled
	Published      uint64 // telemetry messages handed to the client (batches and duplicates included)
	Delivered      uint64 // telemetry messages acknowledged (PUBACK at QoS 1, written at QoS 0)
	PublishErrors  uint64 // telemetry messages that failed; their readings went back to the buffer
	ReadingsAcked  uint64 // readings whose message was acknowledged (each reading once)
	ExpectedStored uint64 // acknowledged readings that carry no fault the hub must reject
	Buffered       uint64 // readings kept in the buffer while disconnected (re-buffered ones included)
	BufferDropped  uint64 // oldest readings dropped because the buffer was full
	Flushed        uint64 // readings sent from the buffer after a reconnect
	Abandoned      uint64 // readings still buffered when the device stopped
	Batches        uint64 // batch messages (JSON arrays) sent by flushes

	Connects        uint64 // successful connections
	ConnectErrors   uint64 // failed connection attempts
	ConnectionsLost uint64 // connections lost without the device asking
	Subscribes      uint64 // subscriptions acknowledged (one per connection)

	CommandsReceived uint64 // command messages received
	CommandsInvalid  uint64 // command messages that could not be decoded
	CommandsExpired  uint64 // commands received after their expiry
	Replies          uint64 // replies sent
	ErrorReplies     uint64 // of which with status "error"
	Reboots          uint64 // reboot commands carried out
	TwinUpdates      uint64 // desired twin documents received
	TwinReports      uint64 // reported twin documents sent
	HubErrors        uint64 // messages received on devices/{id}/errors

	Malformed    uint64 // fault: malformed telemetry messages sent
	OutOfRange   uint64 // fault: messages sent with an out-of-range value
	Skewed       uint64 // fault: readings sent with a skewed clock
	Duplicates   uint64 // fault: readings sent a second time
	StormDrops   uint64 // fault: connections dropped by a disconnect storm
	SlowConsumed uint64 // fault: received messages whose handling was delayed
}

// statField ties a Stats field to its metric name; one table drives the
// counters, the snapshot and the Prometheus collector.
type statField struct {
	name, help string
	field      func(*Stats) *uint64
}

var statFields = []statField{
	{"readings_total", "Readings sampled.", func(s *Stats) *uint64 { return &s.Readings }},
	{"published_total", "Telemetry messages handed to the MQTT client.", func(s *Stats) *uint64 { return &s.Published }},
	{"delivered_total", "Telemetry messages acknowledged.", func(s *Stats) *uint64 { return &s.Delivered }},
	{"publish_errors_total", "Telemetry messages that failed and were re-buffered.", func(s *Stats) *uint64 { return &s.PublishErrors }},
	{"readings_acked_total", "Readings whose message was acknowledged.", func(s *Stats) *uint64 { return &s.ReadingsAcked }},
	{"expected_stored_total", "Acknowledged readings without faults.", func(s *Stats) *uint64 { return &s.ExpectedStored }},
	{"buffered_total", "Readings buffered while disconnected.", func(s *Stats) *uint64 { return &s.Buffered }},
	{"buffer_dropped_total", "Readings dropped from a full buffer.", func(s *Stats) *uint64 { return &s.BufferDropped }},
	{"flushed_total", "Readings sent from the buffer after a reconnect.", func(s *Stats) *uint64 { return &s.Flushed }},
	{"abandoned_total", "Readings still buffered when the device stopped.", func(s *Stats) *uint64 { return &s.Abandoned }},
	{"batches_total", "Batch messages sent by flushes.", func(s *Stats) *uint64 { return &s.Batches }},
	{"connects_total", "Successful connections.", func(s *Stats) *uint64 { return &s.Connects }},
	{"connect_errors_total", "Failed connection attempts.", func(s *Stats) *uint64 { return &s.ConnectErrors }},
	{"connections_lost_total", "Connections lost.", func(s *Stats) *uint64 { return &s.ConnectionsLost }},
	{"subscribes_total", "Subscriptions acknowledged.", func(s *Stats) *uint64 { return &s.Subscribes }},
	{"commands_total", "Command messages received.", func(s *Stats) *uint64 { return &s.CommandsReceived }},
	{"commands_invalid_total", "Command messages that could not be decoded.", func(s *Stats) *uint64 { return &s.CommandsInvalid }},
	{"commands_expired_total", "Commands received after their expiry.", func(s *Stats) *uint64 { return &s.CommandsExpired }},
	{"replies_total", "Command replies sent.", func(s *Stats) *uint64 { return &s.Replies }},
	{"error_replies_total", "Command replies with status error.", func(s *Stats) *uint64 { return &s.ErrorReplies }},
	{"reboots_total", "Reboot commands carried out.", func(s *Stats) *uint64 { return &s.Reboots }},
	{"twin_updates_total", "Desired twin documents received.", func(s *Stats) *uint64 { return &s.TwinUpdates }},
	{"twin_reports_total", "Reported twin documents sent.", func(s *Stats) *uint64 { return &s.TwinReports }},
	{"hub_errors_total", "Messages received on the device's errors topic.", func(s *Stats) *uint64 { return &s.HubErrors }},
	{"fault_malformed_total", "Malformed telemetry messages sent.", func(s *Stats) *uint64 { return &s.Malformed }},
	{"fault_out_of_range_total", "Messages sent with an out-of-range value.", func(s *Stats) *uint64 { return &s.OutOfRange }},
	{"fault_skewed_total", "Readings sent with a skewed clock.", func(s *Stats) *uint64 { return &s.Skewed }},
	{"fault_duplicates_total", "Readings sent a second time.", func(s *Stats) *uint64 { return &s.Duplicates }},
	{"fault_storm_drops_total", "Connections dropped by a disconnect storm.", func(s *Stats) *uint64 { return &s.StormDrops }},
	{"fault_slow_consumed_total", "Received messages whose handling was delayed.", func(s *Stats) *uint64 { return &s.SlowConsumed }},
}

// counters is the live, concurrency-safe form of Stats.
type counters struct {
	readings, published, delivered, publishErrors, readingsAcked, expectedStored atomic.Uint64
	buffered, bufferDropped, flushed, batches, abandoned                         atomic.Uint64
	connects, connectErrors, connectionsLost, subscribes                         atomic.Uint64
	commands, commandsInvalid, commandsExpired, replies, errorReplies, reboots   atomic.Uint64
	twinUpdates, twinReports, hubErrors                                          atomic.Uint64
	malformed, outOfRange, skewed, duplicates, stormDrops, slowConsumed          atomic.Uint64
}

func (c *counters) snapshot() Stats {
	return Stats{
		Readings: c.readings.Load(), Published: c.published.Load(), Delivered: c.delivered.Load(),
		PublishErrors: c.publishErrors.Load(), ReadingsAcked: c.readingsAcked.Load(), ExpectedStored: c.expectedStored.Load(),
		Buffered: c.buffered.Load(), BufferDropped: c.bufferDropped.Load(), Flushed: c.flushed.Load(), Batches: c.batches.Load(), Abandoned: c.abandoned.Load(),
		Connects: c.connects.Load(), ConnectErrors: c.connectErrors.Load(), ConnectionsLost: c.connectionsLost.Load(), Subscribes: c.subscribes.Load(),
		CommandsReceived: c.commands.Load(), CommandsInvalid: c.commandsInvalid.Load(), CommandsExpired: c.commandsExpired.Load(),
		Replies: c.replies.Load(), ErrorReplies: c.errorReplies.Load(), Reboots: c.reboots.Load(),
		TwinUpdates: c.twinUpdates.Load(), TwinReports: c.twinReports.Load(), HubErrors: c.hubErrors.Load(),
		Malformed: c.malformed.Load(), OutOfRange: c.outOfRange.Load(), Skewed: c.skewed.Load(),
		Duplicates: c.duplicates.Load(), StormDrops: c.stormDrops.Load(), SlowConsumed: c.slowConsumed.Load(),
	}
}

// Add sums two snapshots.
func (s Stats) Add(o Stats) Stats {
	for _, f := range statFields {
		*f.field(&s) += *f.field(&o)
	}
	return s
}

// Map returns the counters by metric-style name (without _total), for
// reports and logs.
func (s Stats) Map() map[string]uint64 {
	m := make(map[string]uint64, len(statFields))
	for _, f := range statFields {
		name := f.name[:len(f.name)-len("_total")]
		m[name] = *f.field(&s)
	}
	return m
}

// statsCollector exposes a Stats source as fieldhub_devicesim_* counters.
type statsCollector struct {
	stats func() Stats
	descs []*prometheus.Desc
}

func newStatsCollector(stats func() Stats) *statsCollector {
	c := &statsCollector{stats: stats}
	for _, f := range statFields {
		c.descs = append(c.descs, prometheus.NewDesc("fieldhub_devicesim_"+f.name, f.help, nil, nil))
	}
	return c
}

func (c *statsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

func (c *statsCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	for i, f := range statFields {
		ch <- prometheus.MustNewConstMetric(c.descs[i], prometheus.CounterValue, float64(*f.field(&s)))
	}
}
