// Package broker is fieldhub's embedded MQTT broker: mochi-mqtt with
// fieldhub's listeners (TCP, TLS, WebSocket), the device auth and topic ACL
// hook, connection limits, and device presence.
//
// Devices authenticate with username = device id and password = device
// token, and their MQTT client id must be the device id. A device publishes
// only to its own telemetry, replies/{cmd} and twin/reported topics and
// subscribes only to its own commands, twin/desired and errors topics
// (ARCHITECTURE.md §3). Publishes to those topics are handed to the
// Handler registered for the topic kind before mochi acknowledges them, so
// a QoS 1 PUBACK can mean "stored".
package broker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fieldhub/fieldhub/telemetry"
)

// Authenticator checks a device's token (satisfied by *registry.Registry).
type Authenticator interface {
	AuthenticateDevice(ctx context.Context, id, token string) (bool, error)
}

// PresenceStore records whether devices are connected and when they were
// last seen (satisfied by *registry.Registry).
type PresenceStore interface {
	SetPresence(ctx context.Context, id string, online bool, at time.Time) error
	TouchLastSeen(ctx context.Context, seen map[string]time.Time) error
}

// Message is a device publish as the hub's handlers see it. Payload and
// CorrelationData belong to the message; handlers may keep them but must
// not modify them.
type Message struct {
	Device          string
	Topic           telemetry.Topic
	TopicName       string
	Payload         []byte
	QoS             byte
	ProtocolVersion byte // 3, 4 (3.1.1) or 5
	Retain          bool // as sent; device publishes are never retained by the broker
	ContentType     string
	CorrelationData []byte
	Received        time.Time
}

// Handler takes a device publish. It runs on the publishing client's own
// read goroutine before mochi writes the PUBACK, so for QoS 1 it may block
// until the message is stored. It returns:
//
//   - nil: the message is acknowledged normally.
//   - an error wrapping ErrRejected: the message was invalid and the handler
//     kept it (dead letter). MQTT 5 QoS>0 gets PUBACK 0x99 (payload format
//     invalid); MQTT 3.1.1 has no negative ack and gets a normal PUBACK. The
//     message is not forwarded to subscribers.
//   - any other error: the message was not taken (e.g. the store is down).
//     A QoS>0 publish gets no PUBACK and the client is disconnected (MQTT 5:
//     DISCONNECT 0x88 server unavailable), so it resends after reconnecting.
//     A QoS 0 message is dropped and counted; the client stays connected.
//
// ctx is cancelled when Stop gives up waiting.
type Handler func(ctx context.Context, m Message) error

// ErrRejected marks a handler error for an invalid message; see Handler.
var ErrRejected = errors.New("message rejected")

// Observer receives connection-level events. Its methods are called from
// mochi's callbacks and must not block.
type Observer interface {
	DeviceConnected(id string, protocolVersion byte)
	DeviceDisconnected(id string)
	// DeviceSubscribed follows a granted SUBSCRIBE filter.
	DeviceSubscribed(id, filter string)
	// Delivered follows the device's PUBACK (QoS 1) or PUBCOMP (QoS 2) of a
	// message the hub published to it.
	Delivered(id, topic string, payload []byte)
}

// Deps are the broker's collaborators. Auth is required; without Presence
// no presence is recorded; Logger and Registerer may be nil.
type Deps struct {
	Auth       Authenticator
	Presence   PresenceStore
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Addrs are the bound listener addresses ("" when disabled).
type Addrs struct{ TCP, WS, TLS string }

// PublishOptions shape a hub-to-device publish. ResponseTopic,
// CorrelationData, MessageExpiry and ContentType reach MQTT 5 subscribers
// as properties; 3.1.1 subscribers get the payload only.
type PublishOptions struct {
	QoS             byte
	Retain          bool
	ResponseTopic   string
	CorrelationData []byte
	MessageExpiry   time.Duration // 0 = none; rounded up to whole seconds
	ContentType     string
}

// ErrStopped is returned by Publish after Stop.
var ErrStopped = errors.New("broker stopped")

// hubClientID is the origin of the hub's own publishes. It is not a valid
// device id ('$'), so no device can collide with it.
const hubClientID = "$fieldhub"

// authTimeout bounds one token check against the registry.
const authTimeout = 10 * time.Second

// shutdownWriteTimeout bounds writing the DISCONNECT to a client at Stop.
const shutdownWriteTimeout = 2 * time.Second

// presenceGrace bounds Stop's final presence flush once its context ended.
const presenceGrace = 5 * time.Second

// Broker is the embedded MQTT broker. Create it with New, register
// handlers and observers, then Start and finally Stop it.
type Broker struct {
	cfg     Config
	auth    Authenticator
	log     *slog.Logger
	m       *metrics
	srv     *mqtt.Server
	inline  *mqtt.Client
	pres    *presence
	tlsConf *tls.Config

	// Frozen by Start; read without locks afterwards.
	handlers  map[telemetry.TopicKind]Handler
	observers []Observer

	// ctx is given to handlers and auth checks; cancelled by Stop.
	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex // started, stopped, lns, addrs
	started bool
	stopped bool
	lns     []interface{ wait() }
	addrs   Addrs

	connMu sync.RWMutex
	conns  map[string]*mqtt.Client // device id -> current session

	// evMu orders connect/disconnect bookkeeping, so presence and
	// observers see a session takeover as offline-then-online or as
	// nothing, never online-then-offline.
	evMu sync.Mutex

	delMu      sync.Mutex
	deliveries map[string]*pending // device id -> outbound QoS>0 awaiting its ack
}

// pending are the outbound QoS>0 messages of one session, by packet id.
// Keyed by device id with the owning session, so a new session of the
// device replaces what an old one left (bounded: one session per device).
type pending struct {
	cl   *mqtt.Client
	msgs map[uint16]delivery
}

type delivery struct {
	topic   string
	payload []byte
}

// New validates cfg, loads the TLS files and prepares the broker.
func New(cfg Config, deps Deps) (*Broker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Auth == nil {
		return nil, errors.New("new broker: Deps.Auth is required")
	}
	log := deps.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "broker")
	m, err := newMetrics(deps.Registerer)
	if err != nil {
		return nil, fmt.Errorf("new broker: %w", err)
	}
	b := &Broker{
		cfg:        cfg,
		auth:       deps.Auth,
		log:        log,
		m:          m,
		handlers:   make(map[telemetry.TopicKind]Handler),
		conns:      make(map[string]*mqtt.Client),
		deliveries: make(map[string]*pending),
	}
	b.ctx, b.cancel = context.WithCancel(context.Background())
	b.pres = newPresence(deps.Presence, log, m)
	if cfg.TLS.Addr != "" {
		if b.tlsConf, err = loadTLS(cfg.TLS); err != nil {
			return nil, fmt.Errorf("new broker: %w", err)
		}
	}

	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumClients = cfg.MaxClients
	caps.MaximumPacketSize = cfg.MaxPacketSize
	caps.ReceiveMaximum = cfg.ReceiveMaximum
	caps.MaximumInflight = cfg.MaxInflight
	caps.MaximumClientWritesPending = cfg.MaxQueued
	// A persistent session of a device that went away is kept a day at most.
	caps.MaximumSessionExpiryInterval = 24 * 60 * 60
	// No server-wide message expiry: mochi would also expire retained
	// messages by age, and twin/desired must stay retained. Messages
	// expire by their own MQTT 5 expiry; stored per-client state is
	// bounded by MaxInflight and the session expiry above.
	caps.MaximumMessageExpiryInterval = 0
	// The topic ACL is checked on the topic name, so inbound topic aliases
	// (an empty name) are refused; mochi never advertises aliases anyway.
	caps.TopicAliasMaximum = 0
	// Shared subscriptions are denied by the ACL; say so in CONNACK too.
	caps.SharedSubAvailable = 0
	// Acks must not echo the publish's user properties: mochi would then
	// also write its granted-QoS byte as the PUBACK reason code.
	caps.Compatibilities.NoInheritedPropertiesOnAck = true

	b.srv = mqtt.New(&mqtt.Options{
		Capabilities: caps,
		Logger:       slog.New(mochiLogHandler{log.Handler()}),
		// Nobody may read $SYS; publish it rarely (it reads MemStats).
		SysTopicResendInterval: 600,
	})
	// The hub's own client for Publish. Not Options.InlineClient: mochi
	// would register it in its client map under the id "inline", which is
	// a valid device id, and a device called "inline" would take it over.
	b.inline = b.srv.NewClient(nil, mqtt.LocalListener, hubClientID, true)
	b.inline.Properties.ProtocolVersion = 5 // so mochi honours message expiry on what it keeps
	if err := b.srv.AddHook(&hook{b: b}, nil); err != nil {
		return nil, fmt.Errorf("new broker: %w", err)
	}
	return b, nil
}

func loadTLS(c TLSConfig) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("load TLS certificate %s: %w", c.CertFile, err)
	}
	conf := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if c.ClientCAFile != "" {
		pem, err := os.ReadFile(c.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("load TLS client CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("load TLS client CA %s: no PEM certificate found", c.ClientCAFile)
		}
		conf.ClientCAs = pool
		conf.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return conf, nil
}

// Handle registers h for device publishes of one topic kind (TopicTelemetry,
// TopicReply, TopicTwinReported). Call it before Start. Publishes of a kind
// without a handler are acknowledged and forwarded to subscribers only.
func (b *Broker) Handle(kind telemetry.TopicKind, h Handler) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.started {
		panic("broker: Handle called after Start")
	}
	b.handlers[kind] = h
}

// AddObserver registers o for connection events. Call it before Start.
func (b *Broker) AddObserver(o Observer) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.started {
		panic("broker: AddObserver called after Start")
	}
	b.observers = append(b.observers, o)
}

// Start binds every enabled listener (so ":0" works; see Addrs) and
// starts serving. It returns once the listeners are bound. ctx bounds the
// binding only; Stop ends serving.
func (b *Broker) Start(ctx context.Context) (err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.started {
		return errors.New("start broker: already started")
	}
	b.started = true

	var lc net.ListenConfig
	var bound []net.Listener
	defer func() {
		if err != nil {
			b.stopped = true // a failed start is final; Stop has nothing to do
			for _, ln := range bound {
				_ = ln.Close()
			}
		}
	}()
	listen := func(addr string) (net.Listener, error) {
		ln, err := lc.Listen(ctx, "tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("start broker: listen %s: %w", addr, err)
		}
		bound = append(bound, ln)
		return ln, nil
	}
	var mls []listeners.Listener
	if b.cfg.Addr != "" {
		ln, err := listen(b.cfg.Addr)
		if err != nil {
			return err
		}
		l := &tcpListener{id: "tcp", ln: ln, b: b}
		mls, b.lns, b.addrs.TCP = append(mls, l), append(b.lns, l), ln.Addr().String()
		l.serveWG.Add(1)
	}
	if b.cfg.TLS.Addr != "" {
		ln, err := listen(b.cfg.TLS.Addr)
		if err != nil {
			return err
		}
		l := &tcpListener{id: "tls", ln: ln, tlsConf: b.tlsConf, b: b}
		mls, b.lns, b.addrs.TLS = append(mls, l), append(b.lns, l), ln.Addr().String()
		l.serveWG.Add(1)
	}
	if b.cfg.WSAddr != "" {
		ln, err := listen(b.cfg.WSAddr)
		if err != nil {
			return err
		}
		l := newWSListener("ws", ln, b)
		mls, b.lns, b.addrs.WS = append(mls, l), append(b.lns, l), ln.Addr().String()
		l.serveWG.Add(1)
	}
	for _, l := range mls {
		if err := b.srv.AddListener(l); err != nil {
			return fmt.Errorf("start broker: %w", err)
		}
	}
	go b.pres.run()
	// Serve starts each listener's Serve on a goroutine and returns; it
	// fails only for config-file listeners and storage hooks, unused here.
	if err := b.srv.Serve(); err != nil {
		return fmt.Errorf("start broker: %w", err)
	}
	b.log.Info("mqtt broker listening", "tcp", b.addrs.TCP, "ws", b.addrs.WS, "tls", b.addrs.TLS)
	return nil
}

// Addrs returns the bound addresses; valid after Start.
func (b *Broker) Addrs() Addrs {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.addrs
}

// Stop stops accepting, disconnects every client (MQTT 5 clients get
// DISCONNECT 0x8B server shutting down), waits for the connection
// goroutines, records the devices as offline and flushes presence. If ctx
// ends first, handlers' context is cancelled so blocked handlers return.
func (b *Broker) Stop(ctx context.Context) error {
	b.mu.Lock()
	if !b.started || b.stopped {
		b.stopped = true
		b.mu.Unlock()
		b.cancel()
		return nil
	}
	b.stopped = true
	lns := b.lns
	b.mu.Unlock()

	closed := make(chan struct{})
	go func() {
		defer close(closed)
		_ = b.srv.Close() // closes every listener (ours wait for their connections), then stops mochi
		for _, l := range lns {
			l.wait()
		}
	}()
	var errs []error
	select {
	case <-closed:
	case <-ctx.Done():
		errs = append(errs, fmt.Errorf("stop broker: %w; cancelling handlers", ctx.Err()))
		b.cancel()
		<-closed
	}

	// Every session ended through OnDisconnect; this is a safety net.
	now := time.Now()
	b.evMu.Lock()
	b.connMu.Lock()
	for id := range b.conns {
		b.pres.set(id, false, now)
		delete(b.conns, id)
	}
	b.connMu.Unlock()
	b.evMu.Unlock()
	// Record the offline states even when ctx ran out waiting for
	// handlers: a short grace, as registry writes take milliseconds.
	fctx := ctx
	if ctx.Err() != nil {
		var cancel context.CancelFunc
		fctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), presenceGrace)
		defer cancel()
	}
	b.pres.close(fctx)
	b.cancel()
	b.log.Info("mqtt broker stopped")
	return errors.Join(errs...)
}

// disconnectClients sends DISCONNECT 0x8B (server shutting down) to the
// clients of one listener and closes them. A client that does not read
// gets a bounded time for the write.
func (b *Broker) disconnectClients(listener string) {
	for _, cl := range b.srv.Clients.GetAll() {
		if cl.Net.Listener != listener || cl.Net.Conn == nil || cl.Closed() {
			continue
		}
		_ = cl.Net.Conn.SetWriteDeadline(time.Now().Add(shutdownWriteTimeout))
		_ = b.srv.DisconnectClient(cl, packets.ErrServerShuttingDown)
	}
}

// Connected reports whether a device has an established session.
func (b *Broker) Connected(id string) bool {
	b.connMu.RLock()
	defer b.connMu.RUnlock()
	_, ok := b.conns[id]
	return ok
}

// Publish sends a message from the hub to the subscribers of topic, with
// the hub's rights (no ACL). Retained messages are kept for later
// subscribers (an empty retained payload clears the topic). QoS is the
// maximum the subscribers receive it with.
func (b *Broker) Publish(topic string, payload []byte, opts PublishOptions) error {
	if err := validPublishTopic(topic); err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	if opts.QoS > 2 {
		return fmt.Errorf("publish %s: QoS %d is not 0, 1 or 2", topic, opts.QoS)
	}
	if opts.ResponseTopic != "" {
		if err := validPublishTopic(opts.ResponseTopic); err != nil {
			return fmt.Errorf("publish %s: response topic: %w", topic, err)
		}
	}
	if opts.MessageExpiry < 0 {
		return fmt.Errorf("publish %s: negative message expiry %s", topic, opts.MessageExpiry)
	}
	b.mu.Lock()
	stopped := b.stopped
	b.mu.Unlock()
	if stopped {
		return fmt.Errorf("publish %s: %w", topic, ErrStopped)
	}

	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: opts.QoS, Retain: opts.Retain},
		TopicName:   topic,
		// Copied: retained messages and queued deliveries outlive the call.
		Payload: append([]byte{}, payload...),
		Properties: packets.Properties{
			ResponseTopic:   opts.ResponseTopic,
			CorrelationData: append([]byte(nil), opts.CorrelationData...),
			ContentType:     opts.ContentType,
		},
	}
	if opts.MessageExpiry > 0 {
		secs := (opts.MessageExpiry + time.Second - 1) / time.Second
		pk.Properties.MessageExpiryInterval = uint32(min(int64(secs), math.MaxUint32))
	}
	if opts.QoS > 0 {
		// mochi validates that QoS>0 packets carry an id; the inline
		// client's publishes are never acknowledged, so any id will do.
		pk.PacketID = 1
	}
	if err := b.srv.InjectPacket(b.inline, pk); err != nil {
		return fmt.Errorf("publish %s: %w", topic, err)
	}
	return nil
}

func validPublishTopic(t string) error {
	switch {
	case t == "":
		return errors.New("empty topic")
	case len(t) > math.MaxUint16:
		return fmt.Errorf("topic is %d bytes, more than %d", len(t), math.MaxUint16)
	case strings.ContainsAny(t, "+#\x00"):
		return fmt.Errorf("topic %q has a wildcard or NUL", t)
	}
	return nil
}

// deviceOnline runs when a device's session is established.
func (b *Broker) deviceOnline(cl *mqtt.Client) {
	b.m.connected.Inc()
	now := time.Now()
	b.evMu.Lock()
	defer b.evMu.Unlock()
	b.connMu.Lock()
	b.conns[cl.ID] = cl
	b.connMu.Unlock()
	b.pres.set(cl.ID, true, now)
	for _, o := range b.observers {
		o.DeviceConnected(cl.ID, cl.Properties.ProtocolVersion)
	}
}

// deviceOffline runs when a session ends. A session taken over by a new
// connection of the same device is not the current one any more, and its
// end changes nothing.
func (b *Broker) deviceOffline(cl *mqtt.Client) {
	b.m.connected.Dec()
	now := time.Now()
	b.evMu.Lock()
	defer b.evMu.Unlock()
	b.connMu.Lock()
	cur, ok := b.conns[cl.ID]
	current := ok && cur == cl
	if current {
		delete(b.conns, cl.ID)
	}
	b.connMu.Unlock()
	if !current {
		return
	}
	b.pres.set(cl.ID, false, now)
	for _, o := range b.observers {
		o.DeviceDisconnected(cl.ID)
	}
}

// connectionClosed counts a closed connection once mochi is done with it.
func (b *Broker) connectionClosed(st *connState, err error) {
	reason := st.closeReason()
	if reason == "" {
		reason = closeReason(err, st.authed.Load(), st)
	}
	b.m.closed.WithLabelValues(reason).Inc()
	b.log.Debug("mqtt connection closed", "reason", reason, "error", err)
}

// closeReason names why a connection ended, from the error that ended it.
func closeReason(err error, established bool, st *connState) string {
	var code packets.Code
	switch {
	case err == nil:
		return "client_disconnect"
	case errors.Is(err, packets.ErrPacketTooLarge):
		return "packet_too_large"
	case errors.Is(err, os.ErrDeadlineExceeded):
		if !established {
			return "connect_timeout"
		}
		return "keepalive_timeout"
	case st != nil && st.tls != nil && !st.tls.ConnectionState().HandshakeComplete:
		return "tls_handshake"
	case errors.Is(err, packets.ErrServerBusy):
		return "max_clients"
	case errors.Is(err, packets.ErrServerShuttingDown):
		return "server_shutdown"
	case errors.Is(err, packets.ErrSessionTakenOver):
		return "taken_over"
	case errors.Is(err, packets.ErrNotAuthorized):
		return "not_authorized"
	case errors.Is(err, packets.CodeDisconnect), errors.Is(err, packets.CodeDisconnectWillMessage):
		return "client_disconnect"
	case errors.As(err, &code):
		return "protocol_error"
	case errors.Is(err, net.ErrClosed), errors.Is(err, os.ErrClosed):
		return "closed"
	default:
		// EOF, connection reset, broken pipe, malformed packets.
		return "connection_lost"
	}
}

// mochiLogHandler demotes mochi's per-message and per-client log lines to
// Debug: they repeat for every bad message or client, and the broker
// counts those events in metrics already.
type mochiLogHandler struct{ slog.Handler }

var mochiDemoted = map[string]bool{
	"publish packet error":           true, // every handler verdict other than success (e.g. PUBACK 0x99)
	"error processing packet":        true,
	mqtt.ErrMinimumKeepalive.Error(): true,
	"":                               true, // listeners' unnamed warnings
}

func (h mochiLogHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level > slog.LevelDebug && mochiDemoted[r.Message] {
		if !h.Handler.Enabled(ctx, slog.LevelDebug) {
			return nil
		}
		r.Level = slog.LevelDebug
	}
	return h.Handler.Handle(ctx, r)
}

func (h mochiLogHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return mochiLogHandler{h.Handler.WithAttrs(as)}
}

func (h mochiLogHandler) WithGroup(name string) slog.Handler {
	return mochiLogHandler{h.Handler.WithGroup(name)}
}
