package devicesim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldhub/fieldhub/telemetry"
)

// deviceConfig is everything one simulated device needs.
type deviceConfig struct {
	ID        string
	Token     string
	Anonymous bool
	Broker    string
	QoS       byte
	Interval  time.Duration
	Metrics   []MetricSpec
	Seed      uint64
	Buffer    int
	Batch     int
	Faults    Faults
	Backoff   Backoff
	// StartDelay is when the first reading is taken; the fleet spreads
	// devices over the first interval so they do not publish in step.
	StartDelay     time.Duration
	ConnectTimeout time.Duration
	RebootDelay    time.Duration
	// Drain is how long Stop waits for in-flight messages.
	Drain time.Duration
}

// Device is one simulated device: its own MQTT connection (paho), its
// signals, its offline buffer and its command handling. All of its state is
// owned by one goroutine (run); paho callbacks hand messages to it through
// the events channel, so a device costs one goroutine and two timers plus
// paho's per-connection goroutines.
type Device struct {
	cfg   deviceConfig
	log   *slog.Logger
	now   func() time.Time
	stats counters

	events chan event
	done   chan struct{}

	// Owned by run.
	signals      []Signal
	quoted       [][]byte
	metricIdx    map[string]int
	firstNumeric int
	faultRng     *rand.Rand
	jitterRng    *rand.Rand
	interval     time.Duration
	seq          uint64
	sigT         time.Duration
	buf          []*reading // oldest first, at most cfg.Buffer
	unacked      []pending  // in publish order
	gen          uint64
	conn         *connection // connected, or nil
	connecting   *connection // a CONNECT in progress, or nil
	attempt      int
	rebooting    bool
	quiet        bool // Quiesce: no new readings
	sampleT      *time.Timer
	retryT       *time.Timer
	twinVersion  int64
	reported     map[string]json.RawMessage
}

// connection is one paho client from dial to close. stop is closed when
// the device is done with it, which releases paho callbacks still trying to
// hand over messages (a blocked callback would stall paho's Disconnect).
type connection struct {
	gen     uint64
	client  paho.Client
	stop    chan struct{}
	connTok paho.Token
	subTok  paho.Token

	dropped bool // by a storm; counted once

	mu  sync.Mutex
	raw *dropConn
}

func (c *connection) setRaw(n net.Conn) net.Conn {
	dc := &dropConn{Conn: n}
	c.mu.Lock()
	c.raw = dc
	c.mu.Unlock()
	return dc
}

// drop closes the TCP connection under paho's feet: the broker sees the
// socket close without a DISCONNECT, as with a radio link going down.
func (c *connection) drop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.raw != nil {
		c.raw.drop()
	}
}

// errLinkDropped is what paho reads from a dropped connection.
var errLinkDropped = errors.New("network link dropped (simulated)")

// dropConn turns the local close of a storm into a network error: paho
// ignores "use of closed network connection", taking it for its own
// Disconnect, and would never report the connection lost.
type dropConn struct {
	net.Conn
	dropped atomic.Bool
}

func (c *dropConn) drop() {
	c.dropped.Store(true)
	c.Conn.Close()
}

func (c *dropConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if err != nil && c.dropped.Load() {
		err = errLinkDropped
	}
	return n, err
}

func (c *dropConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if err != nil && c.dropped.Load() {
		err = errLinkDropped
	}
	return n, err
}

type pending struct {
	tok      paho.Token
	readings []*reading
	dupCopy  bool // the second copy of a duplicated reading
}

type eventKind uint8

const (
	evLost eventKind = iota + 1
	evCommand
	evTwin
	evDrop
	evQuiesce
)

type event struct {
	kind    eventKind
	gen     uint64
	name    string
	payload []byte
	err     error
}

func newDevice(cfg deviceConfig, log *slog.Logger, now func() time.Time) (*Device, error) {
	if err := telemetry.ValidateDeviceID(cfg.ID); err != nil {
		return nil, err
	}
	d := &Device{
		cfg:          cfg,
		log:          log.With("device", cfg.ID),
		now:          now,
		events:       make(chan event, 8),
		done:         make(chan struct{}),
		metricIdx:    map[string]int{},
		firstNumeric: -1,
		interval:     cfg.Interval,
		faultRng:     rand.New(rand.NewPCG(SignalSeed(cfg.Seed, cfg.ID, "\x00faults"))),
		jitterRng:    rand.New(rand.NewPCG(SignalSeed(cfg.Seed, cfg.ID, "\x00backoff"))),
		reported:     map[string]json.RawMessage{},
	}
	for i, m := range cfg.Metrics {
		s, err := NewSignal(m, cfg.Seed, cfg.ID)
		if err != nil {
			return nil, err
		}
		q, _ := json.Marshal(m.Name)
		d.signals = append(d.signals, s)
		d.quoted = append(d.quoted, q)
		d.metricIdx[m.Name] = i
		if d.firstNumeric < 0 && m.numeric() {
			d.firstNumeric = i
		}
	}
	return d, nil
}

// ID is the device id.
func (d *Device) ID() string { return d.cfg.ID }

// Stats returns the device's counters.
func (d *Device) Stats() Stats { return d.stats.snapshot() }

// run is the device's firmware loop. It returns when ctx is done, after
// giving in-flight messages cfg.Drain to be acknowledged.
func (d *Device) run(ctx context.Context) {
	defer close(d.done)
	d.sampleT = time.NewTimer(d.cfg.StartDelay)
	d.retryT = time.NewTimer(time.Hour)
	d.retryT.Stop()
	defer d.sampleT.Stop()
	defer d.retryT.Stop()
	d.connect(ctx)
	for {
		var connDone, subDone, ackDone <-chan struct{}
		if d.connecting != nil {
			connDone = d.connecting.connTok.Done()
		}
		if d.conn != nil && d.conn.subTok != nil {
			subDone = d.conn.subTok.Done()
		}
		if len(d.unacked) > 0 {
			ackDone = d.unacked[0].tok.Done()
		}
		select {
		case <-ctx.Done():
			d.shutdown()
			return
		case <-d.sampleT.C:
			if !d.rebooting && !d.quiet {
				d.sample()
			}
			d.sampleT.Reset(d.interval)
		case <-connDone:
			d.connectDone(ctx)
		case <-subDone:
			if err := d.conn.subTok.Error(); err != nil {
				d.log.Warn("subscribe failed", "err", err)
			} else {
				d.stats.subscribes.Add(1)
			}
			d.conn.subTok = nil
		case <-ackDone:
			d.collectAcks()
		case <-d.retryT.C:
			d.rebooting = false
			d.connect(ctx)
		case ev := <-d.events:
			d.handle(ev)
		}
	}
}

func (d *Device) connect(ctx context.Context) {
	d.gen++
	c := &connection{gen: d.gen, stop: make(chan struct{})}
	opts := paho.NewClientOptions().
		AddBroker(d.cfg.Broker).
		SetClientID(d.cfg.ID).
		SetCleanSession(true).
		SetAutoReconnect(false). // the device's own loop reconnects, with jitter
		SetConnectRetry(false).
		SetConnectTimeout(d.cfg.ConnectTimeout).
		SetKeepAlive(30 * time.Second).
		SetWriteTimeout(10 * time.Second).
		SetOrderMatters(true)
	if !d.cfg.Anonymous {
		opts.SetUsername(d.cfg.ID).SetPassword(d.cfg.Token)
	}
	opts.SetCustomOpenConnectionFn(func(u *url.URL, o paho.ClientOptions) (net.Conn, error) {
		nc, err := net.DialTimeout("tcp", u.Host, o.ConnectTimeout)
		if err != nil {
			return nil, err
		}
		return c.setRaw(nc), nil
	})
	opts.SetConnectionLostHandler(func(_ paho.Client, err error) {
		d.post(ctx, c, event{kind: evLost, gen: c.gen, err: err})
	})
	c.client = paho.NewClient(opts)
	c.connTok = c.client.Connect()
	d.connecting = c
}

func (d *Device) connectDone(ctx context.Context) {
	c := d.connecting
	d.connecting = nil
	if err := c.connTok.Error(); err != nil {
		close(c.stop)
		d.stats.connectErrors.Add(1)
		d.log.Debug("connect failed", "err", err, "attempt", d.attempt+1)
		d.scheduleRetry()
		return
	}
	d.conn = c
	d.attempt = 0
	d.stats.connects.Add(1)
	id := d.cfg.ID
	c.subTok = c.client.SubscribeMultiple(map[string]byte{
		telemetry.TopicPrefix + id + "/commands/#": 1,
		telemetry.TwinDesiredTopic(id):             1,
		telemetry.ErrorsTopic(id):                  1,
	}, d.handler(ctx, c))
	d.flush()
}

// handler receives the device's subscribed messages on paho's router
// goroutine. With OrderMatters, paho sends the PUBACK after it returns, so
// the slow-consumer fault delays acknowledgements as a slow device would.
func (d *Device) handler(ctx context.Context, c *connection) paho.MessageHandler {
	return func(_ paho.Client, m paho.Message) {
		if slow := d.cfg.Faults.SlowConsumer; slow > 0 {
			d.stats.slowConsumed.Add(1)
			t := time.NewTimer(slow)
			select {
			case <-t.C:
			case <-c.stop:
				t.Stop()
				return
			}
		}
		tp := telemetry.ParseTopic(m.Topic())
		switch tp.Kind {
		case telemetry.TopicErrors:
			d.stats.hubErrors.Add(1)
			d.log.Debug("hub rejected a message", "reason", string(m.Payload()))
		case telemetry.TopicCommand:
			d.post(ctx, c, event{kind: evCommand, gen: c.gen, name: tp.Name, payload: m.Payload()})
		case telemetry.TopicTwinDesired:
			d.post(ctx, c, event{kind: evTwin, gen: c.gen, payload: m.Payload()})
		}
	}
}

func (d *Device) post(ctx context.Context, c *connection, ev event) {
	select {
	case d.events <- ev:
	case <-c.stop:
	case <-ctx.Done():
	}
}

func (d *Device) handle(ev event) {
	switch ev.kind {
	case evLost:
		if d.conn == nil || ev.gen != d.conn.gen {
			return
		}
		d.stats.connectionsLost.Add(1)
		d.log.Debug("connection lost", "err", ev.err)
		d.closeConn(false)
		d.scheduleRetry()
	case evQuiesce:
		d.quiet = true
	case evDrop:
		if d.conn != nil && !d.conn.dropped {
			d.conn.dropped = true
			d.stats.stormDrops.Add(1)
			d.conn.drop()
		}
	case evCommand:
		if d.conn != nil && ev.gen == d.conn.gen {
			d.command(ev.name, ev.payload)
		}
	case evTwin:
		if d.conn != nil && ev.gen == d.conn.gen {
			d.twin(ev.payload)
		}
	}
}

// closeConn forgets the current connection and puts its unacknowledged
// readings back in the buffer. With disconnect it also says goodbye to the
// broker (reboot, stop); a lost connection is already closed.
func (d *Device) closeConn(disconnect bool) {
	c := d.conn
	d.conn = nil
	close(c.stop)
	if disconnect {
		// paho fails the tokens of unacknowledged publishes here.
		c.client.Disconnect(250)
	}
	d.requeueUnacked()
}

func (d *Device) scheduleRetry() {
	d.attempt++
	d.retryT.Reset(d.cfg.Backoff.wait(d.attempt, d.jitterRng))
}

// wait is the delay before reconnect attempt n (1-based): exponential,
// capped, then spread by ±Jitter.
func (b Backoff) wait(n int, rng *rand.Rand) time.Duration {
	w := float64(b.Min) * math.Pow(2, float64(min(n-1, 32)))
	w = min(w, float64(b.Max))
	if b.Jitter > 0 {
		w *= 1 + b.Jitter*(2*rng.Float64()-1)
	}
	return time.Duration(w)
}

// sample takes one reading and sends it, or buffers it while offline.
func (d *Device) sample() {
	vals := make([]telemetry.Value, len(d.signals))
	for i, s := range d.signals {
		vals[i] = s.Next(d.sigT)
	}
	d.sigT += d.interval
	d.seq++
	r := &reading{seq: d.seq, ts: d.now().UnixMilli()}

	// Always draw the same numbers so fault decisions do not shift when
	// the fault settings change.
	f := &d.cfg.Faults
	pMal, pOOR, pSkew, pDup := 100*d.faultRng.Float64(), 100*d.faultRng.Float64(), 100*d.faultRng.Float64(), 100*d.faultRng.Float64()
	r.malformed = pMal < f.MalformedPct
	r.outOfRange = !r.malformed && d.firstNumeric >= 0 && pOOR < f.OutOfRangePct
	if r.outOfRange {
		oor := DefaultOutOfRangeValue
		if f.OutOfRangeValue != nil {
			oor = *f.OutOfRangeValue
		}
		vals[d.firstNumeric] = num(oor)
	}
	skewPct := 100.0
	if f.ClockSkewPct != nil {
		skewPct = *f.ClockSkewPct
	}
	// A malformed message's timestamp cannot be read, so it is not
	// counted as skewed.
	if f.ClockSkew != 0 && pSkew < skewPct && !r.malformed {
		r.ts += f.ClockSkew.Milliseconds()
		r.skewed = true
	}
	r.dup = !r.faulted() && pDup < f.DuplicatePct
	r.obj = appendReading(make([]byte, 0, 64+24*len(vals)), r.ts, r.seq, d.quoted, vals)
	if r.malformed {
		// Truncated JSON: undecodable, as from a firmware bug or a cut
		// write.
		r.obj = r.obj[:len(r.obj)/2]
	}
	d.stats.readings.Add(1)

	if d.conn == nil {
		d.bufferReadings(nil, r)
		return
	}
	if len(d.buf) > 0 {
		// Readings that failed while the link stayed up (a publish
		// timeout) go first.
		d.flush()
	}
	d.publishOne(r)
}

func (d *Device) topic() string { return telemetry.TelemetryTopic(d.cfg.ID) }

func (d *Device) countFaults(r *reading) {
	if r.malformed {
		d.stats.malformed.Add(1)
	}
	if r.outOfRange {
		d.stats.outOfRange.Add(1)
	}
	if r.skewed {
		d.stats.skewed.Add(1)
	}
}

func (d *Device) publishOne(r *reading) {
	tok := d.conn.client.Publish(d.topic(), d.cfg.QoS, false, r.obj)
	d.stats.published.Add(1)
	d.countFaults(r)
	d.unacked = append(d.unacked, pending{tok: tok, readings: []*reading{r}})
	if r.dup {
		tok := d.conn.client.Publish(d.topic(), d.cfg.QoS, false, r.obj)
		d.stats.published.Add(1)
		d.stats.duplicates.Add(1)
		d.unacked = append(d.unacked, pending{tok: tok, readings: []*reading{r}, dupCopy: true})
	}
}

// flush sends the buffer: healthy readings in batches (JSON arrays) with
// their original timestamps, faulted ones alone so each is one rejection.
func (d *Device) flush() {
	rs := d.buf
	d.buf = nil
	var batch []*reading
	send := func() {
		if len(batch) == 0 {
			return
		}
		tok := d.conn.client.Publish(d.topic(), d.cfg.QoS, false, appendBatch(nil, batch))
		d.stats.published.Add(1)
		d.stats.batches.Add(1)
		d.stats.flushed.Add(uint64(len(batch)))
		for _, r := range batch {
			d.countFaults(r)
			if r.dup {
				d.stats.duplicates.Add(1)
			}
		}
		d.unacked = append(d.unacked, pending{tok: tok, readings: batch})
		batch = nil
	}
	for _, r := range rs {
		if r.faulted() {
			send()
			d.stats.flushed.Add(1)
			d.publishOne(r)
			continue
		}
		batch = append(batch, r)
		if len(batch) == d.cfg.Batch {
			send()
		}
	}
	send()
}

// collectAcks settles the finished publishes at the head of unacked.
func (d *Device) collectAcks() {
	var failed []*reading
	for len(d.unacked) > 0 {
		p := d.unacked[0]
		select {
		case <-p.tok.Done():
		default:
			d.bufferReadings(failed)
			return
		}
		d.unacked[0] = pending{}
		d.unacked = d.unacked[1:]
		failed = append(failed, d.settle(p, false)...)
	}
	d.unacked = nil
	d.bufferReadings(failed)
}

// requeueUnacked settles every unacknowledged publish after the
// connection is gone; paho has failed their tokens, and any not finished
// is treated as failed (a copy may have arrived: the hub deduplicates).
func (d *Device) requeueUnacked() {
	var failed []*reading
	for _, p := range d.unacked {
		failed = append(failed, d.settle(p, true)...)
	}
	d.unacked = nil
	d.bufferReadings(failed)
}

// settle counts one finished publish and returns the readings to resend.
func (d *Device) settle(p pending, gone bool) []*reading {
	done := false
	select {
	case <-p.tok.Done():
		done = true
	default:
	}
	if done && p.tok.Error() == nil {
		d.stats.delivered.Add(1)
		if !p.dupCopy {
			for _, r := range p.readings {
				d.stats.readingsAcked.Add(1)
				if !r.faulted() {
					d.stats.expectedStored.Add(1)
				}
			}
		}
		return nil
	}
	if !done && !gone {
		return nil
	}
	d.stats.publishErrors.Add(1)
	if p.dupCopy {
		return nil
	}
	return p.readings
}

// bufferReadings puts older readings (front) before the buffer and newer
// ones (back) after it, then drops the oldest beyond the bound.
func (d *Device) bufferReadings(front []*reading, back ...*reading) {
	n := len(front) + len(back)
	if n == 0 {
		return
	}
	d.stats.buffered.Add(uint64(n))
	if len(front) > 0 {
		d.buf = append(front, d.buf...)
	}
	d.buf = append(d.buf, back...)
	if over := len(d.buf) - d.cfg.Buffer; over > 0 {
		d.stats.bufferDropped.Add(uint64(over))
		clear(d.buf[:over])
		d.buf = slices.Clone(d.buf[over:])
	}
}

// shutdown waits a little for in-flight messages, then disconnects. What
// is still buffered then is counted as abandoned, so that
// Readings = ReadingsAcked + BufferDropped + Abandoned.
func (d *Device) shutdown() {
	defer func() { d.stats.abandoned.Add(uint64(len(d.buf))) }()
	if c := d.connecting; c != nil {
		// Let the CONNECT finish so paho's goroutines can be stopped.
		select {
		case <-c.connTok.Done():
		case <-time.After(d.cfg.ConnectTimeout + time.Second):
		}
		d.connecting = nil
		close(c.stop)
		if c.connTok.Error() == nil {
			c.client.Disconnect(0)
		}
	}
	if d.conn == nil {
		return
	}
	deadline := time.NewTimer(d.cfg.Drain)
	defer deadline.Stop()
	for len(d.unacked) > 0 {
		select {
		case <-d.unacked[0].tok.Done():
			d.collectAcks()
			continue
		case <-deadline.C:
		}
		break
	}
	d.closeConn(true)
}

// reply publishes a command reply (QoS 1) and returns its token.
func (d *Device) reply(cmdID string, r Reply) paho.Token {
	b, err := json.Marshal(r)
	if err != nil {
		// Result values come from decoded JSON and durations; this
		// cannot fail, but do not send garbage if it does.
		b, _ = json.Marshal(errReply("encode reply: %v", err))
	}
	d.stats.replies.Add(1)
	if r.Status != "ok" {
		d.stats.errorReplies.Add(1)
	}
	return d.conn.client.Publish(telemetry.ReplyTopic(d.cfg.ID, cmdID), 1, false, b)
}

// command runs one of the built-in commands and replies.
func (d *Device) command(name string, payload []byte) {
	d.stats.commands.Add(1)
	var cmd command
	if err := json.Unmarshal(payload, &cmd); err != nil || cmd.ID == "" {
		d.stats.commandsInvalid.Add(1)
		d.log.Warn("undecodable command, no reply possible", "name", name, "err", err, "payload", string(payload))
		return
	}
	if cmd.ExpiresAt != "" {
		exp, err := time.Parse(time.RFC3339Nano, cmd.ExpiresAt)
		if err != nil {
			d.reply(cmd.ID, errReply("bad expires_at %q: %v", cmd.ExpiresAt, err))
			return
		}
		if d.now().After(exp) {
			d.stats.commandsExpired.Add(1)
			d.reply(cmd.ID, errReply("command expired at %s", cmd.ExpiresAt))
			return
		}
	}
	params := func(v any) error {
		if len(cmd.Params) == 0 || string(cmd.Params) == "null" {
			return nil
		}
		dec := json.NewDecoder(bytes.NewReader(cmd.Params))
		dec.DisallowUnknownFields()
		if err := dec.Decode(v); err != nil {
			return fmt.Errorf("params: %w", err)
		}
		return nil
	}
	switch name {
	case "set_interval":
		var p struct {
			Interval string `json:"interval"`
		}
		if err := params(&p); err != nil {
			d.reply(cmd.ID, errReply("%v", err))
			return
		}
		iv, err := parseInterval(p.Interval)
		if err != nil {
			d.reply(cmd.ID, errReply("interval: %v", err))
			return
		}
		d.interval = iv
		d.sampleT.Reset(iv)
		d.reply(cmd.ID, okReply(map[string]any{"interval": iv.String()}))
	case "set":
		var p struct {
			Metric string          `json:"metric"`
			Value  json.RawMessage `json:"value"`
		}
		if err := params(&p); err != nil {
			d.reply(cmd.ID, errReply("%v", err))
			return
		}
		if err := d.setMetric(p.Metric, p.Value); err != nil {
			d.reply(cmd.ID, errReply("%v", err))
			return
		}
		d.reply(cmd.ID, okReply(map[string]any{"metric": p.Metric, "value": p.Value}))
	case "reboot":
		var p struct {
			Delay string `json:"delay"`
		}
		if err := params(&p); err != nil {
			d.reply(cmd.ID, errReply("%v", err))
			return
		}
		delay := d.cfg.RebootDelay
		if p.Delay != "" {
			v, err := time.ParseDuration(p.Delay)
			if err != nil || v < 0 {
				d.reply(cmd.ID, errReply("delay: bad duration %q", p.Delay))
				return
			}
			delay = v
		}
		// Reply first, as firmware acknowledges before restarting.
		tok := d.reply(cmd.ID, okReply(map[string]any{"delay": delay.String()}))
		tok.WaitTimeout(5 * time.Second)
		d.stats.reboots.Add(1)
		d.closeConn(true)
		d.rebooting = true
		d.retryT.Reset(delay)
	case "fail":
		var p struct {
			Error string `json:"error"`
		}
		if err := params(&p); err != nil {
			d.reply(cmd.ID, errReply("%v", err))
			return
		}
		if p.Error == "" {
			p.Error = "simulated failure"
		}
		d.reply(cmd.ID, errReply("%s", p.Error))
	default:
		d.reply(cmd.ID, errReply("unknown command %q", name))
	}
}

func parseInterval(s string) (time.Duration, error) {
	if s == "" {
		return 0, errors.New("missing")
	}
	iv, err := time.ParseDuration(s)
	if err != nil {
		return 0, err
	}
	if iv < time.Millisecond {
		return 0, fmt.Errorf("%s is below 1ms", iv)
	}
	return iv, nil
}

func (d *Device) setMetric(metric string, raw json.RawMessage) error {
	i, ok := d.metricIdx[metric]
	if !ok {
		return fmt.Errorf("unknown metric %q", metric)
	}
	v, err := jsonValue(raw)
	if err != nil {
		return fmt.Errorf("metric %s: %w", metric, err)
	}
	if err := d.signals[i].Set(v); err != nil {
		return fmt.Errorf("metric %s: %w", metric, err)
	}
	return nil
}

// twin applies a desired document and reports the result with the same
// version. "interval" sets the publish interval, a metric name sets that
// signal's setpoint, other keys are kept and reported as they came.
// A retained document arrives again after each reconnect; reporting it
// again is harmless and repairs a report lost with the connection.
func (d *Device) twin(payload []byte) {
	if len(payload) == 0 {
		return // retained document cleared
	}
	var doc twinDesired
	if err := json.Unmarshal(payload, &doc); err != nil {
		d.stats.commandsInvalid.Add(1)
		d.log.Warn("undecodable desired twin", "err", err)
		return
	}
	d.stats.twinUpdates.Add(1)
	if doc.Version < d.twinVersion {
		return
	}
	keys := make([]string, 0, len(doc.Desired))
	for k := range doc.Desired {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		raw := doc.Desired[k]
		var err error
		switch _, isMetric := d.metricIdx[k]; {
		case k == "interval":
			var s string
			if err = json.Unmarshal(raw, &s); err == nil {
				var iv time.Duration
				if iv, err = parseInterval(s); err == nil && iv != d.interval {
					d.interval = iv
					d.sampleT.Reset(iv)
				}
			}
		case isMetric:
			err = d.setMetric(k, raw)
		}
		if err != nil {
			d.log.Warn("desired twin key not applied", "key", k, "err", err)
			continue
		}
		d.reported[k] = raw
	}
	d.twinVersion = doc.Version
	b, _ := json.Marshal(TwinReported{Version: doc.Version, Reported: d.reported})
	d.conn.client.Publish(telemetry.TwinReportedTopic(d.cfg.ID), 1, false, b)
	d.stats.twinReports.Add(1)
}
