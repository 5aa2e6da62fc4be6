// Package extmqtt connects fieldhub's ingest and command roles to an
// external MQTT broker (EMQX, HiveMQ, VerneMQ, Mosquitto) instead of the
// embedded one, so that several fieldhub processes can share the work of a
// broker cluster (docs/deploy.md).
//
// A Client takes device messages the way the embedded broker's handlers do
// (broker.Handler, keyed by telemetry.TopicKind) and publishes the hub's
// messages with broker.PublishOptions, so the hub wires ingest and command
// to either the same way.
//
// # Delivery guarantee
//
// The client subscribes at QoS 1 through a shared subscription
// ($share/{group}/devices/+/telemetry: the broker hands each message to one
// member of the group, MQTT 5 §4.8.2, which Mosquitto and EMQX also offer
// to 3.1.1 clients), with a persistent session (clean session off, a fixed
// client id) and manual acknowledgements: a message's PUBACK is sent only
// once its handler returned nil or a broker.ErrRejected error, that is
// once the readings are committed to the store or the dead letter is. Any
// other handler error is retried here with backoff; nothing is
// acknowledged meanwhile. A worker that dies therefore leaves its
// unacknowledged messages in its session, and the broker sends them again
// when a client with the same id resumes the session [MQTT-4.4.0-1]:
// nothing acknowledged is lost, and redelivery is harmless because the
// store keeps a reading once (ARCHITECTURE.md §4).
//
// Messages are handled concurrently (up to Options.Concurrency), so many
// share one group commit, but acknowledged in the order they arrived, as a
// client must [MQTT-4.6.0-2]; a message finished early waits for the ones
// before it. paho.mqtt.golang is used with OrderMatters on (its handler runs
// in arrival order and only enqueues) and auto-ack off.
//
// paho.mqtt.golang v1 speaks MQTT 3.1.1, so the MQTT 5 properties of
// broker.PublishOptions (response topic, correlation data, message expiry,
// content type) are not sent: devices find the command id and expiry in
// the command's payload. Nor can a client observe which devices are
// connected or when they acknowledge a command (see docs/deploy.md).
package extmqtt

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fieldhub/fieldhub/broker"
	"github.com/fieldhub/fieldhub/telemetry"
)

// Backoff bounds the wait between two attempts of a failed handler: it
// starts at Min and doubles up to Max.
type Backoff struct{ Min, Max time.Duration }

// Options configure a Client. URL and ClientID are required.
type Options struct {
	// URL is the broker: tcp:// (or mqtt://), ssl:// (tls://, mqtts://),
	// ws:// or wss://.
	URL string
	// ClientID must be stable across restarts and unique per worker: the
	// broker keeps the session, and the unacknowledged messages, under it.
	// Two live clients with one id take the session from each other.
	ClientID string
	// Username and Password are the service account on the broker.
	Username, Password string
	// TLS is used for ssl:// and wss:// URLs (nil: system roots).
	TLS *tls.Config
	// Group is the shared subscription group: handled topics are
	// subscribed as $share/{Group}/{filter}. "" subscribes plainly (every
	// client gets every message).
	Group string
	// CleanSession starts a new session at every connect, dropping
	// unacknowledged messages. Off for workers; tests and one-off tools.
	CleanSession bool
	// Concurrency bounds the messages handled at once; it should exceed
	// the broker's in-flight window per client (Mosquitto's
	// max_inflight_messages, 20 by default; EMQX's max_inflight, 32; both
	// worth raising for ingest workers, see docs/deploy.md), so every
	// in-flight message joins the next commit. Default 1024.
	Concurrency int
	// ConnectTimeout bounds the first connection (Start) and each attempt
	// to reconnect. Default 10s.
	ConnectTimeout time.Duration
	// KeepAlive is the MQTT keep alive. Default 30s.
	KeepAlive time.Duration
	// PublishTimeout bounds Publish's wait for the broker's PUBACK.
	// Default 10s.
	PublishTimeout time.Duration
	// RetryBackoff paces retries of failed handlers. Default 100ms..5s.
	RetryBackoff Backoff
	// Name labels this client's metrics (client="ingest") and logs.
	Name       string
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Client is a connection to an external broker. Create it with New,
// register handlers with Handle, then Start and finally Stop it. Publish
// may be called from any goroutine once started.
type Client struct {
	o   Options
	log *slog.Logger
	m   *metrics
	cl  paho.Client

	handlers map[telemetry.TopicKind]broker.Handler
	filters  []string // subscription filters, with the $share prefix

	work    chan job
	closing chan struct{} // closed by Stop: take no new messages
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup // workers
	acks    acker
	seq     uint64 // next arrival number; paho calls onMessage sequentially

	subscribed atomic.Bool
	firstSub   chan error // the first subscription's result, for Start
	started    atomic.Bool
	stopOnce   sync.Once
}

type job struct {
	seq uint64
	msg paho.Message
	h   broker.Handler
	m   broker.Message
}

// Filter is the subscription filter of a device-to-hub topic kind.
func Filter(kind telemetry.TopicKind) (string, bool) {
	switch kind {
	case telemetry.TopicTelemetry:
		return "devices/+/telemetry", true
	case telemetry.TopicReply:
		return "devices/+/replies/+", true
	case telemetry.TopicTwinReported:
		return "devices/+/twin/reported", true
	}
	return "", false
}

// New checks the options; it does not connect.
func New(o Options) (*Client, error) {
	if o.URL == "" || o.ClientID == "" {
		return nil, errors.New("extmqtt: URL and ClientID are required")
	}
	u, err := url.Parse(o.URL)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("extmqtt: url %q is not a broker URL like tcp://host:1883", o.URL)
	}
	switch u.Scheme {
	case "tcp", "mqtt", "ssl", "tls", "mqtts", "ws", "wss":
	default:
		return nil, fmt.Errorf("extmqtt: url %q: scheme %q is not one of tcp, mqtt, ssl, tls, mqtts, ws, wss", o.URL, u.Scheme)
	}
	if strings.ContainsAny(o.Group, "/+#") {
		return nil, fmt.Errorf("extmqtt: group %q may not hold '/', '+' or '#'", o.Group)
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 1024
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = 10 * time.Second
	}
	if o.KeepAlive <= 0 {
		o.KeepAlive = 30 * time.Second
	}
	if o.PublishTimeout <= 0 {
		o.PublishTimeout = 10 * time.Second
	}
	if o.RetryBackoff.Min <= 0 {
		o.RetryBackoff.Min = 100 * time.Millisecond
	}
	if o.RetryBackoff.Max < o.RetryBackoff.Min {
		o.RetryBackoff.Max = max(5*time.Second, o.RetryBackoff.Min)
	}
	if o.Name == "" {
		o.Name = "mqtt"
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(o.Registerer, o.Name)
	if err != nil {
		return nil, fmt.Errorf("extmqtt: %w", err)
	}
	c := &Client{
		o: o, log: o.Logger.With("mqtt_client", o.Name, "client_id", o.ClientID), m: m,
		handlers: map[telemetry.TopicKind]broker.Handler{},
		work:     make(chan job), closing: make(chan struct{}),
		firstSub: make(chan error, 1),
		acks:     acker{done: map[uint64]paho.Message{}},
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	return c, nil
}

// Handle registers the handler of a device-to-hub topic kind (telemetry,
// replies, twin reports) and subscribes to its filter. Call it before
// Start. The handler contract is broker.Handler's: nil or an error
// wrapping broker.ErrRejected acknowledges the message, any other error
// is retried.
func (c *Client) Handle(kind telemetry.TopicKind, h broker.Handler) {
	if c.started.Load() {
		panic("extmqtt: Handle after Start")
	}
	f, ok := Filter(kind)
	if !ok {
		panic(fmt.Sprintf("extmqtt: topic kind %d is not a device-to-hub topic", kind))
	}
	if _, dup := c.handlers[kind]; !dup {
		if c.o.Group != "" {
			f = "$share/" + c.o.Group + "/" + f
		}
		c.filters = append(c.filters, f)
	}
	c.handlers[kind] = h
}

// Start connects, subscribes, and starts handling messages. It fails when
// the first connection or subscription fails (a wrong URL, credentials or
// ACL), so a misconfigured worker stops at once; after that the client
// reconnects by itself, with backoff, and resubscribes.
func (c *Client) Start(ctx context.Context) error {
	if !c.started.CompareAndSwap(false, true) {
		return errors.New("extmqtt: already started")
	}
	po := paho.NewClientOptions().
		AddBroker(c.o.URL).
		SetClientID(c.o.ClientID).
		SetUsername(c.o.Username).
		SetPassword(c.o.Password).
		SetCleanSession(c.o.CleanSession).
		SetAutoAckDisabled(true).
		// Ordered dispatch: onMessage runs in arrival order and only hands
		// the message to a worker, so the acker knows the arrival order.
		SetOrderMatters(true).
		SetKeepAlive(c.o.KeepAlive).
		SetPingTimeout(c.o.ConnectTimeout).
		SetConnectTimeout(c.o.ConnectTimeout).
		SetWriteTimeout(c.o.PublishTimeout).
		SetAutoReconnect(true).
		SetMaxReconnectInterval(30 * time.Second).
		SetConnectRetry(false).
		SetResumeSubs(false).
		SetDefaultPublishHandler(c.onMessage).
		SetOnConnectHandler(c.onConnect).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			c.subscribed.Store(false)
			c.m.connected.Set(0)
			c.m.lost.Inc()
			c.log.Warn("connection to the MQTT broker lost; reconnecting", "error", err)
		}).
		SetReconnectingHandler(func(paho.Client, *paho.ClientOptions) {
			c.log.Info("reconnecting to the MQTT broker", "url", c.o.URL)
		})
	if c.o.TLS != nil {
		po.SetTLSConfig(c.o.TLS)
	}
	c.cl = paho.NewClient(po)

	for range c.o.Concurrency {
		c.wg.Add(1)
		go c.worker()
	}
	t := c.cl.Connect()
	if !t.WaitTimeout(c.o.ConnectTimeout) {
		c.shutdown()
		return fmt.Errorf("connect to %s: no answer within %s", c.o.URL, c.o.ConnectTimeout)
	}
	if err := t.Error(); err != nil {
		c.shutdown()
		return fmt.Errorf("connect to %s as %q: %w", c.o.URL, c.o.ClientID, err)
	}
	select {
	case err := <-c.firstSub:
		if err != nil {
			c.shutdown()
			return err
		}
	case <-time.After(c.o.ConnectTimeout + c.o.PublishTimeout):
		c.shutdown()
		return fmt.Errorf("subscribe at %s: no answer", c.o.URL)
	case <-ctx.Done():
		c.shutdown()
		return fmt.Errorf("subscribe at %s: %w", c.o.URL, ctx.Err())
	}
	c.log.Info("connected to the MQTT broker", "url", c.o.URL, "subscriptions", c.filters, "clean_session", c.o.CleanSession)
	return nil
}

// onConnect runs (on its own goroutine) after every connect: subscribe
// again, as a broker that lost the session (or a clean session) has
// forgotten the subscriptions. With the session kept, subscribing again
// changes nothing [MQTT-3.8.4-3].
func (c *Client) onConnect(cl paho.Client) {
	c.m.connected.Set(1)
	err := c.subscribe(cl)
	if err != nil {
		c.log.Error("subscribe failed; messages are not taken until the next reconnect", "error", err)
	} else {
		c.subscribed.Store(true)
	}
	select {
	case c.firstSub <- err:
	default:
	}
}

func (c *Client) subscribe(cl paho.Client) error {
	if len(c.filters) == 0 {
		return nil
	}
	subs := make(map[string]byte, len(c.filters))
	for _, f := range c.filters {
		subs[f] = 1
	}
	// A nil callback leaves delivery to the default handler (onMessage).
	t := cl.SubscribeMultiple(subs, nil)
	if !t.WaitTimeout(c.o.PublishTimeout) {
		return fmt.Errorf("subscribe %v: no SUBACK within %s", c.filters, c.o.PublishTimeout)
	}
	if err := t.Error(); err != nil {
		return fmt.Errorf("subscribe %v: %w", c.filters, err)
	}
	for f, q := range t.(*paho.SubscribeToken).Result() {
		if q > 2 { // 0x80: refused [MQTT-3.9.3]
			return fmt.Errorf("subscribe %s: refused by the broker (SUBACK 0x%02x); does the service account's ACL allow it?", f, q)
		}
	}
	return nil
}

// onMessage is paho's handler, called in arrival order. It must not block
// for long: it hands the message to a worker (waiting while all are busy,
// which holds back reading from the broker: back-pressure).
func (c *Client) onMessage(_ paho.Client, pm paho.Message) {
	seq := c.seq
	c.seq++
	j := job{seq: seq, msg: pm}
	t := telemetry.ParseTopic(pm.Topic())
	h := c.handlers[t.Kind]
	if h == nil {
		// Not a topic of the contract (an id the contract forbids, or a
		// subscription overlap): nothing can take it, so it is
		// acknowledged and dropped rather than redelivered forever.
		c.m.messages.WithLabelValues("unknown_topic").Inc()
		c.log.Debug("message on an unknown topic dropped", "topic", truncate(pm.Topic()))
		c.acks.finish(seq, pm)
		return
	}
	j.h = h
	j.m = broker.Message{
		Device: t.Device, Topic: t, TopicName: pm.Topic(), Payload: pm.Payload(),
		QoS: pm.Qos(), Retain: pm.Retained(), Received: time.Now(),
	}
	select {
	case c.work <- j:
	case <-c.closing:
		c.acks.finish(seq, nil) // not acknowledged: the broker sends it again
		c.m.messages.WithLabelValues("abandoned").Inc()
	}
}

func (c *Client) worker() {
	defer c.wg.Done()
	for {
		select {
		case j := <-c.work:
			c.handle(j)
		case <-c.closing:
			return
		}
	}
}

// handle runs the handler until it takes the message, then queues the
// acknowledgement.
func (c *Client) handle(j job) {
	c.m.inflight.Inc()
	defer c.m.inflight.Dec()
	delay := c.o.RetryBackoff.Min
	for attempt := 1; ; attempt++ {
		err := j.h(c.ctx, j.m)
		switch {
		case err == nil:
			c.m.messages.WithLabelValues("acked").Inc()
			c.acks.finish(j.seq, j.msg)
			return
		case errors.Is(err, broker.ErrRejected):
			c.m.messages.WithLabelValues("rejected").Inc()
			c.acks.finish(j.seq, j.msg)
			return
		}
		c.m.handlerErrors.Inc()
		if attempt == 1 || attempt%20 == 0 {
			c.log.Warn("handling a message failed; retrying it (not acknowledged)", "topic", truncate(j.m.TopicName), "attempt", attempt, "error", err)
		}
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-c.closing:
			t.Stop()
			c.m.messages.WithLabelValues("abandoned").Inc()
			c.acks.finish(j.seq, nil)
			return
		}
		delay = min(2*delay, c.o.RetryBackoff.Max)
	}
}

// Publish sends a hub-to-device message at QoS 1 (or the QoS asked for)
// and waits for the broker's PUBACK. The MQTT 5 properties of o are not
// sent (MQTT 3.1.1). While the client reconnects a QoS 1 message is kept
// and sent after the reconnect; Publish then returns a timeout error
// although the message may still go out.
func (c *Client) Publish(topic string, payload []byte, o broker.PublishOptions) error {
	t, err := c.publish(topic, payload, o)
	if err != nil {
		return err
	}
	if !t.WaitTimeout(c.o.PublishTimeout) {
		c.m.publishErrors.Inc()
		return fmt.Errorf("publish %s: not acknowledged by the broker within %s", truncate(topic), c.o.PublishTimeout)
	}
	if err := t.Error(); err != nil {
		c.m.publishErrors.Inc()
		return fmt.Errorf("publish %s: %w", truncate(topic), err)
	}
	return nil
}

// PublishNoWait sends like Publish without waiting for the PUBACK, for
// best-effort reports (devices/{id}/errors).
func (c *Client) PublishNoWait(topic string, payload []byte, o broker.PublishOptions) error {
	_, err := c.publish(topic, payload, o)
	return err
}

func (c *Client) publish(topic string, payload []byte, o broker.PublishOptions) (paho.Token, error) {
	if c.cl == nil {
		return nil, errors.New("extmqtt: publish before Start")
	}
	select {
	case <-c.closing:
		return nil, broker.ErrStopped
	default:
	}
	if o.QoS > 2 {
		return nil, fmt.Errorf("publish %s: QoS %d", truncate(topic), o.QoS)
	}
	t := c.cl.Publish(topic, o.QoS, o.Retain, payload)
	if t.Error() != nil { // set at once when not connected
		c.m.publishErrors.Inc()
		return nil, fmt.Errorf("publish %s: %w", truncate(topic), t.Error())
	}
	return t, nil
}

// Connected reports whether the connection to the broker is up.
func (c *Client) Connected() bool { return c.cl != nil && c.cl.IsConnectionOpen() }

// Ready is nil when the client is connected and subscribed, for /readyz.
func (c *Client) Ready() error {
	if !c.Connected() {
		return fmt.Errorf("not connected to the MQTT broker %s", c.o.URL)
	}
	if !c.subscribed.Load() {
		return fmt.Errorf("not subscribed at the MQTT broker %s", c.o.URL)
	}
	return nil
}

// Stop stops taking messages, waits for the handlers of those already
// taken (so their acknowledgements go out) until ctx ends, then
// disconnects. It does not unsubscribe: the session, and the shared
// subscription's share of messages, stay with the broker for when this
// client id comes back. Messages not yet handled are not acknowledged and
// will be sent again.
func (c *Client) Stop(ctx context.Context) error {
	var err error
	c.stopOnce.Do(func() {
		close(c.closing)
		done := make(chan struct{})
		go func() { c.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			c.cancel() // handlers see it and give up; their messages stay unacknowledged
			<-done
			err = fmt.Errorf("stop mqtt client %s: %w", c.o.Name, ctx.Err())
		}
		c.cancel()
		if c.cl != nil {
			// The acknowledgements are queued ahead of the DISCONNECT;
			// the quiesce lets paho write them.
			c.cl.Disconnect(250)
		}
		c.m.connected.Set(0)
		c.m.unregister()
		c.log.Info("disconnected from the MQTT broker")
	})
	return err
}

// shutdown undoes a failed Start.
func (c *Client) shutdown() {
	_ = c.Stop(context.Background())
}

// acker releases acknowledgements in arrival order [MQTT-4.6.0-2]: a
// message finished out of order waits for the ones before it. A nil
// message in done releases its place without an acknowledgement (the
// message will be sent again after a reconnect).
type acker struct {
	mu   sync.Mutex
	next uint64
	done map[uint64]paho.Message
}

type noAck struct{ paho.Message }

func (a *acker) finish(seq uint64, m paho.Message) {
	if m == nil {
		m = noAck{}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.done[seq] = m
	for {
		m, ok := a.done[a.next]
		if !ok {
			return
		}
		delete(a.done, a.next)
		a.next++
		if _, skip := m.(noAck); !skip {
			// Under the lock, so acknowledgements leave in order. Ack only
			// hands the PUBACK to paho's writer; after a connection loss
			// paho drops it (the broker resends the message anyway).
			m.Ack()
		}
	}
}

// DefaultClientID derives a client id that is stable for one worker:
// fieldhub-{hostname}-{first 8 hex digits of sha256(absolute data_dir)}.
// Two workers on one host differ by data_dir; a worker restarted on the
// same host and data_dir resumes its session.
func DefaultClientID(dataDir string) (string, error) {
	host, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("client id: %w", err)
	}
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		return "", fmt.Errorf("client id: %w", err)
	}
	var b strings.Builder
	for _, r := range host {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' {
			b.WriteRune(r)
		}
		if b.Len() >= 32 {
			break
		}
	}
	sum := sha256.Sum256([]byte(abs))
	return "fieldhub-" + b.String() + "-" + hex.EncodeToString(sum[:4]), nil
}

// TLSConfig builds the client TLS configuration from PEM files: ca ("" for
// the system roots) verifies the broker, cert and key (both or neither)
// authenticate this client.
func TLSConfig(ca, cert, key string) (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if ca != "" {
		b, err := os.ReadFile(ca)
		if err != nil {
			return nil, fmt.Errorf("read CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("CA %s: no PEM certificate in it", ca)
		}
		c.RootCAs = pool
	}
	if cert != "" || key != "" {
		kp, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		c.Certificates = []tls.Certificate{kp}
	}
	return c, nil
}

func truncate(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}

// metrics are the fieldhub_extmqtt_* collectors, labelled client=Name.
type metrics struct {
	reg           prometheus.Registerer
	cs            []prometheus.Collector
	connected     prometheus.Gauge
	lost          prometheus.Counter
	messages      *prometheus.CounterVec
	handlerErrors prometheus.Counter
	publishErrors prometheus.Counter
	inflight      prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer, name string) (*metrics, error) {
	cl := prometheus.Labels{"client": name}
	m := &metrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{Name: "fieldhub_extmqtt_connected", ConstLabels: cl,
			Help: "1 while the connection to the external MQTT broker is up."}),
		lost: prometheus.NewCounter(prometheus.CounterOpts{Name: "fieldhub_extmqtt_connections_lost_total", ConstLabels: cl,
			Help: "Connections to the external MQTT broker lost."}),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fieldhub_extmqtt_messages_total", ConstLabels: cl,
			Help: "Messages taken from the external broker, by result: acked (handled), rejected (dead-lettered, acked), unknown_topic (dropped, acked), abandoned (not acked at shutdown; the broker resends it)."},
			[]string{"result"}),
		handlerErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "fieldhub_extmqtt_handler_errors_total", ConstLabels: cl,
			Help: "Failed attempts to handle a message (retried, not acknowledged)."}),
		publishErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "fieldhub_extmqtt_publish_errors_total", ConstLabels: cl,
			Help: "Publishes to the external broker that failed or were not acknowledged in time."}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{Name: "fieldhub_extmqtt_handling", ConstLabels: cl,
			Help: "Messages being handled now (not yet acknowledged)."}),
	}
	for _, r := range []string{"acked", "rejected", "unknown_topic", "abandoned"} {
		m.messages.WithLabelValues(r)
	}
	m.cs = []prometheus.Collector{m.connected, m.lost, m.messages, m.handlerErrors, m.publishErrors, m.inflight}
	if reg == nil {
		return m, nil
	}
	for i, c := range m.cs {
		if err := reg.Register(c); err != nil {
			for _, r := range m.cs[:i] {
				reg.Unregister(r)
			}
			return nil, err
		}
	}
	m.reg = reg
	return m, nil
}

func (m *metrics) unregister() {
	if m.reg == nil {
		return
	}
	for _, c := range m.cs {
		m.reg.Unregister(c)
	}
}
