package devicesim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldhub/fieldhub/telemetry"
)

// LoadConfig configures a load run: many light clients publishing small
// telemetry messages as fast as asked, measuring publish→PUBACK latency.
type LoadConfig struct {
	Broker  string
	Devices int
	// Rate is messages per second per device (open loop). Ignored when
	// ClosedLoop is set.
	Rate float64
	// ClosedLoop makes each device publish its next message as soon as the
	// previous one is acknowledged.
	ClosedLoop bool
	QoS        byte
	Duration   time.Duration
	// Metrics is how many metrics each message carries (default 1): 10
	// gives the ~180-byte reading of fieldhub's benchmark.
	Metrics int
	// Credentials give the devices' ids and tokens (the first Devices
	// of them); with Anonymous, ids are IDPrefix + a number and no
	// username or password is sent.
	Credentials []Credential
	Anonymous   bool
	IDPrefix    string
	// MaxInflight bounds unacknowledged messages per device in open loop;
	// a tick that finds the window full is skipped and counted. Default 100.
	MaxInflight int
	// ConnectConcurrency bounds simultaneous CONNECTs. Default 100.
	ConnectConcurrency int
	ConnectTimeout     time.Duration // default 15s
	// Drain is how long to wait for in-flight acknowledgements after
	// Duration. Default 5s.
	Drain time.Duration
	// Progress, if set, is called about every second while publishing.
	Progress func(LoadProgress)
	Logger   *slog.Logger
}

// LoadProgress is the live state of a load run.
type LoadProgress struct {
	Elapsed  time.Duration
	Sent     uint64
	Acked    uint64
	Errors   uint64
	InFlight uint64
	Rate     float64 // acknowledgements per second over the last interval
}

func (p LoadProgress) String() string {
	return fmt.Sprintf("%6.1fs sent=%d acked=%d errors=%d inflight=%d rate=%.0f/s",
		p.Elapsed.Seconds(), p.Sent, p.Acked, p.Errors, p.InFlight, p.Rate)
}

// LoadReport is the result of a load run. Sent = Acked + the sum of
// Errors + InFlight, always.
type LoadReport struct {
	Broker         string            `json:"broker"`
	Mode           string            `json:"mode"` // "open" or "closed"
	QoS            int               `json:"qos"`
	Devices        int               `json:"devices"`
	Connected      int               `json:"connected"`
	ConnectErrors  map[string]uint64 `json:"connect_errors"`
	ConnectSeconds float64           `json:"connect_seconds"`
	RatePerDevice  float64           `json:"rate_per_device,omitempty"`
	TargetRate     float64           `json:"target_rate,omitempty"`
	Seconds        float64           `json:"seconds"` // publishing phase
	Sent           uint64            `json:"sent"`
	Acked          uint64            `json:"acked"`
	Errors         map[string]uint64 `json:"errors"`
	InFlight       uint64            `json:"in_flight"`
	// Skipped counts open-loop ticks not sent because the device's
	// in-flight window was full (the broker was not keeping up).
	Skipped     uint64 `json:"skipped"`
	Disconnects uint64 `json:"disconnects"`
	// MsgsPerSec is acknowledgements per second over the publishing phase
	// plus the drain that collected the last acknowledgements.
	MsgsPerSec float64 `json:"msgs_per_sec"`
	// MaxLagMS is how far behind its schedule the open-loop sender fell
	// at worst; large values mean the simulator could not keep the rate.
	MaxLagMS   float64        `json:"max_lag_ms"`
	Latency    LatencySummary `json:"latency_ms"`
	CPUSeconds float64        `json:"cpu_seconds"` // the simulator's user+system CPU while publishing
	CPUPercent float64        `json:"cpu_percent"` // of one core
}

// LatencySummary is publish→PUBACK latency in milliseconds (publish→written
// at QoS 0).
type LatencySummary struct {
	Count uint64  `json:"count"`
	Mean  float64 `json:"mean"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	P999  float64 `json:"p99_9"`
	Max   float64 `json:"max"`
}

// ErrorCount is the total of a report's errors by kind.
func (r *LoadReport) ErrorCount() uint64 {
	var n uint64
	for _, v := range r.Errors {
		n += v
	}
	return n
}

// Text renders the report for a terminal.
func (r *LoadReport) Text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "broker %s, %s loop, QoS %d, %d/%d devices connected in %.1fs\n", r.Broker, r.Mode, r.QoS, r.Connected, r.Devices, r.ConnectSeconds)
	if r.Mode == "open" {
		fmt.Fprintf(&b, "target %.0f msg/s (%.3g per device), max lag behind schedule %.1f ms\n", r.TargetRate, r.RatePerDevice, r.MaxLagMS)
	}
	fmt.Fprintf(&b, "%.1fs: sent %d, acked %d, errors %d, in flight at end %d, skipped %d, disconnects %d\n",
		r.Seconds, r.Sent, r.Acked, r.ErrorCount(), r.InFlight, r.Skipped, r.Disconnects)
	fmt.Fprintf(&b, "throughput %.0f msg/s acknowledged\n", r.MsgsPerSec)
	l := r.Latency
	fmt.Fprintf(&b, "latency ms: p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f  mean %.3f  (n=%d)\n", l.P50, l.P90, l.P99, l.P999, l.Max, l.Mean, l.Count)
	fmt.Fprintf(&b, "simulator CPU %.2fs (%.0f%% of one core)\n", r.CPUSeconds, r.CPUPercent)
	for _, m := range []struct {
		name string
		m    map[string]uint64
	}{{"errors", r.Errors}, {"connect errors", r.ConnectErrors}} {
		if len(m.m) == 0 {
			continue
		}
		keys := make([]string, 0, len(m.m))
		for k := range m.m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		fmt.Fprintf(&b, "%s:", m.name)
		for _, k := range keys {
			fmt.Fprintf(&b, " %s=%d", k, m.m[k])
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// Message error kinds of a load report.
const (
	ErrKindNotConnected   = "not_connected"
	ErrKindConnectionLost = "connection_lost"
	ErrKindTimeout        = "timeout"
	ErrKindOther          = "other"
)

func errorKind(err error) string {
	switch {
	case errors.Is(err, paho.ErrNotConnected):
		return ErrKindNotConnected
	case strings.Contains(err.Error(), "connection lost"):
		return ErrKindConnectionLost
	case strings.Contains(err.Error(), "timeout"):
		return ErrKindTimeout
	}
	return ErrKindOther
}

type inflight struct {
	tok paho.Token
	t0  time.Time
}

type loadClient struct {
	id     string
	client paho.Client
	seq    uint64
	topic  string
	window chan inflight // open loop: unacknowledged messages in order
}

type loadRun struct {
	cfg      LoadConfig
	log      *slog.Logger
	hist     Histogram
	sent     atomic.Uint64
	acked    atomic.Uint64
	skipped  atomic.Uint64
	inflight atomic.Uint64 // counted once, when the run gives up waiting
	lost     atomic.Uint64
	maxLag   atomic.Int64

	connectStart time.Time

	mu   sync.Mutex
	errs map[string]uint64
}

func (l *loadRun) fail(err error) {
	l.mu.Lock()
	l.errs[errorKind(err)]++
	l.mu.Unlock()
}

func (l *loadRun) errorTotal() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	var n uint64
	for _, v := range l.errs {
		n += v
	}
	return n
}

// settle records a finished publish.
func (l *loadRun) settle(f inflight) {
	if err := f.tok.Error(); err != nil {
		l.fail(err)
		return
	}
	l.hist.Record(time.Since(f.t0))
	l.acked.Add(1)
}

// wait waits for one publish until it finishes or the run stops waiting;
// it reports false in the latter case, having counted it in flight.
func (l *loadRun) wait(f inflight, stop <-chan struct{}) bool {
	select {
	case <-f.tok.Done():
		l.settle(f)
		return true
	case <-stop:
		select {
		case <-f.tok.Done():
			l.settle(f)
		default:
			l.inflight.Add(1)
		}
		return false
	}
}

func (c *loadClient) publish(l *loadRun) inflight {
	c.seq++
	now := time.Now()
	b := make([]byte, 0, 64+18*max(l.cfg.Metrics, 1))
	b = append(b, `{"ts":`...)
	b = strconv.AppendInt(b, now.UnixMilli(), 10)
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, c.seq, 10)
	b = append(b, `,"metrics":{"value":`...)
	b = strconv.AppendUint(b, c.seq%1000, 10)
	for i := 1; i < l.cfg.Metrics; i++ {
		b = append(b, `,"m`...)
		b = strconv.AppendInt(b, int64(i), 10)
		b = append(b, `":`...)
		b = strconv.AppendFloat(b, float64(c.seq%997)+float64(i)/4, 'f', 2, 64)
	}
	b = append(b, "}}"...)
	tok := c.client.Publish(c.topic, l.cfg.QoS, false, b)
	l.sent.Add(1)
	return inflight{tok: tok, t0: now}
}

// RunLoad connects the devices, publishes for cfg.Duration, waits up to
// cfg.Drain for the last acknowledgements, disconnects and reports.
func RunLoad(ctx context.Context, cfg LoadConfig) (*LoadReport, error) {
	if err := checkBrokerURL(cfg.Broker); err != nil {
		return nil, err
	}
	if cfg.Devices < 1 {
		return nil, errors.New("load: devices must be >= 1")
	}
	if cfg.Duration <= 0 {
		return nil, errors.New("load: duration must be > 0")
	}
	if cfg.QoS > 1 {
		return nil, fmt.Errorf("load: qos %d not supported (0 or 1)", cfg.QoS)
	}
	if !cfg.ClosedLoop && cfg.Rate <= 0 {
		return nil, errors.New("load: rate must be > 0 in open loop (or use closed loop)")
	}
	if !cfg.Anonymous && len(cfg.Credentials) < cfg.Devices {
		return nil, fmt.Errorf("load: %d devices but %d credentials (pass a credentials file with enough devices, or --anonymous)", cfg.Devices, len(cfg.Credentials))
	}
	if cfg.MaxInflight <= 0 {
		cfg.MaxInflight = 100
	}
	if cfg.ConnectConcurrency <= 0 {
		cfg.ConnectConcurrency = 100
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = 15 * time.Second
	}
	if cfg.Drain <= 0 {
		cfg.Drain = 5 * time.Second
	}
	if cfg.IDPrefix == "" {
		cfg.IDPrefix = "load-"
	}
	l := &loadRun{cfg: cfg, log: cfg.Logger, errs: map[string]uint64{}}
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	rep := &LoadReport{Broker: cfg.Broker, QoS: int(cfg.QoS), Devices: cfg.Devices, Mode: "open", ConnectErrors: map[string]uint64{}}
	if cfg.ClosedLoop {
		rep.Mode = "closed"
	} else {
		rep.RatePerDevice = cfg.Rate
	}

	clients, connectErrs, err := l.connectAll(ctx)
	rep.ConnectErrors = connectErrs
	defer func() {
		var wg sync.WaitGroup
		for _, c := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.client.Disconnect(100)
			}()
		}
		wg.Wait()
	}()
	if err != nil {
		return nil, err
	}
	rep.Connected = len(clients)
	if len(clients) == 0 {
		return rep, errors.New("load: no device could connect")
	}
	rep.ConnectSeconds = time.Since(l.connectStart).Seconds()
	if !cfg.ClosedLoop {
		rep.TargetRate = cfg.Rate * float64(len(clients))
	}

	cpu0 := cpuTime()
	start := time.Now()
	end := start.Add(cfg.Duration)
	stopWaiting := make(chan struct{})
	var senders, waiters sync.WaitGroup
	pctx, cancel := context.WithDeadline(ctx, end)
	defer cancel()

	if cfg.ClosedLoop {
		for _, c := range clients {
			senders.Add(1)
			go func() {
				defer senders.Done()
				for pctx.Err() == nil {
					if !l.wait(c.publish(l), stopWaiting) {
						return
					}
				}
			}()
		}
	} else {
		for _, c := range clients {
			c.window = make(chan inflight, cfg.MaxInflight)
			waiters.Add(1)
			go func() {
				defer waiters.Done()
				l.drainWindow(c, stopWaiting)
			}()
		}
		shards := min(len(clients), 4*runtime.GOMAXPROCS(0))
		for s := range shards {
			var mine []*loadClient
			for i := s; i < len(clients); i += shards {
				mine = append(mine, clients[i])
			}
			senders.Add(1)
			go func() {
				defer senders.Done()
				l.openLoop(pctx, mine, start)
			}()
		}
	}

	progressDone := make(chan struct{})
	go func() {
		defer close(progressDone)
		l.progress(pctx, start)
	}()

	<-pctx.Done()
	<-progressDone
	if !cfg.ClosedLoop {
		// Open-loop senders do not wait on acks: once they are done,
		// every message they sent is in a window.
		senders.Wait()
	}
	// Give the last messages Drain to be acknowledged, then stop waiting.
	drainEnd := time.Now().Add(cfg.Drain)
	for time.Now().Before(drainEnd) && l.acked.Load()+l.errorTotal() < l.sent.Load() {
		time.Sleep(10 * time.Millisecond)
	}
	close(stopWaiting)
	senders.Wait()
	waiters.Wait()
	elapsed := time.Since(start)
	cpu := cpuTime() - cpu0

	rep.Seconds = min(elapsed, cfg.Duration).Seconds()
	rep.Sent = l.sent.Load()
	rep.Acked = l.acked.Load()
	rep.InFlight = l.inflight.Load()
	rep.Skipped = l.skipped.Load()
	rep.Disconnects = l.lost.Load()
	l.mu.Lock()
	rep.Errors = maps(l.errs)
	l.mu.Unlock()
	rep.MsgsPerSec = float64(rep.Acked) / elapsed.Seconds()
	rep.MaxLagMS = float64(l.maxLag.Load()) / 1e6
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
	rep.Latency = LatencySummary{
		Count: l.hist.Count(), Mean: ms(l.hist.Mean()),
		P50: ms(l.hist.Quantile(0.5)), P90: ms(l.hist.Quantile(0.9)), P99: ms(l.hist.Quantile(0.99)),
		P999: ms(l.hist.Quantile(0.999)), Max: ms(l.hist.Max()),
	}
	rep.CPUSeconds = cpu.Seconds()
	rep.CPUPercent = 100 * cpu.Seconds() / elapsed.Seconds()
	return rep, nil
}

func maps(m map[string]uint64) map[string]uint64 {
	out := make(map[string]uint64, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func (l *loadRun) connectAll(ctx context.Context) ([]*loadClient, map[string]uint64, error) {
	cfg := l.cfg
	l.connectStart = time.Now()
	all := make([]*loadClient, cfg.Devices)
	errs := map[string]uint64{}
	var mu sync.Mutex
	sem := make(chan struct{}, cfg.ConnectConcurrency)
	var wg sync.WaitGroup
	width := len(strconv.Itoa(cfg.Devices))
	for i := range cfg.Devices {
		c := &loadClient{}
		opts := paho.NewClientOptions().
			AddBroker(cfg.Broker).
			SetCleanSession(true).
			SetAutoReconnect(false).
			SetConnectRetry(false).
			SetConnectTimeout(cfg.ConnectTimeout).
			SetKeepAlive(60 * time.Second).
			SetWriteTimeout(30 * time.Second).
			SetOrderMatters(false).
			SetConnectionLostHandler(func(paho.Client, error) { l.lost.Add(1) })
		if cfg.Anonymous {
			c.id = fmt.Sprintf("%s%0*d", cfg.IDPrefix, width, i+1)
		} else {
			cr := cfg.Credentials[i]
			c.id = cr.ID
			opts.SetUsername(cr.ID).SetPassword(cr.Token)
		}
		if err := telemetry.ValidateDeviceID(c.id); err != nil {
			return nil, nil, fmt.Errorf("load: %w", err)
		}
		opts.SetClientID(c.id)
		c.topic = telemetry.TelemetryTopic(c.id)
		c.client = paho.NewClient(opts)
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return compact(all), errs, ctx.Err()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			tok := c.client.Connect()
			tok.Wait()
			if err := tok.Error(); err != nil {
				mu.Lock()
				errs[connectErrorKind(err)]++
				mu.Unlock()
				l.log.Debug("connect failed", "device", c.id, "err", err)
				return
			}
			all[i] = c
		}()
	}
	wg.Wait()
	return compact(all), errs, nil
}

func connectErrorKind(err error) string {
	s := err.Error()
	switch {
	case strings.Contains(s, "not Authorized"), strings.Contains(s, "bad user name or password"):
		return "not_authorized"
	case strings.Contains(s, "refused"):
		return "refused"
	case strings.Contains(s, "timeout"), strings.Contains(s, "i/o timeout"):
		return "timeout"
	}
	return "other"
}

func compact(cs []*loadClient) []*loadClient {
	return slices.DeleteFunc(cs, func(c *loadClient) bool { return c == nil })
}

// drainWindow waits for one client's open-loop messages in publish order.
// A broker acknowledges a connection's QoS 1 messages in order
// ([MQTT-4.6.0-2]), so waiting on the oldest first does not delay the
// measurement of the others.
func (l *loadRun) drainWindow(c *loadClient, stop <-chan struct{}) {
	for {
		select {
		case f := <-c.window:
			if l.wait(f, stop) {
				continue
			}
		case <-stop:
		}
		// Stopped: settle what is done, count the rest in flight.
		for {
			select {
			case f := <-c.window:
				l.wait(f, stop)
			default:
				return
			}
		}
	}
}

// openLoop sends for a shard of clients at cfg.Rate each: message k of the
// shard is due at start + k/(n*Rate) and goes to client k mod n, so every
// client publishes at Rate with evenly spread phases. Publishing does not
// wait for acknowledgements (that is the waiters' job), so a slow broker
// shows up as latency and skipped ticks, not as a lower send rate.
func (l *loadRun) openLoop(ctx context.Context, cs []*loadClient, start time.Time) {
	n := len(cs)
	period := float64(time.Second) / (l.cfg.Rate * float64(n))
	var k int64
	for ctx.Err() == nil {
		now := time.Now()
		due := int64(float64(now.Sub(start)) / period)
		for ; k <= due; k++ {
			if lag := now.Sub(start) - time.Duration(float64(k)*period); lag > time.Duration(l.maxLag.Load()) {
				l.maxLag.Store(int64(lag))
			}
			c := cs[k%int64(n)]
			if len(c.window) == cap(c.window) {
				l.skipped.Add(1)
				continue
			}
			c.window <- c.publish(l)
		}
		next := start.Add(time.Duration(float64(k) * period))
		t := time.NewTimer(time.Until(next))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

func (l *loadRun) progress(ctx context.Context, start time.Time) {
	if l.cfg.Progress == nil {
		<-ctx.Done()
		return
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var prevAcked uint64
	prev := start
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			sent, acked, errs := l.sent.Load(), l.acked.Load(), l.errorTotal()
			p := LoadProgress{Elapsed: now.Sub(start), Sent: sent, Acked: acked, Errors: errs,
				Rate: float64(acked-prevAcked) / now.Sub(prev).Seconds()}
			if sent > acked+errs {
				p.InFlight = sent - acked - errs
			}
			prevAcked, prev = acked, now
			l.cfg.Progress(p)
		}
	}
}
