package broker

import (
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// connState is what the broker knows about one accepted connection. mochi
// hands the hooks a *mqtt.Client whose Net.Conn is our conn, so the hooks
// reach it through the stateful interface.
type connState struct {
	authed atomic.Bool // CONNECT passed the auth hook
	reason atomic.Pointer[string]
	tls    *tls.Conn // set on the TLS listener, to tell handshake failures apart
}

// setReason records why the connection ends; the first reason wins.
func (s *connState) setReason(r string) { s.reason.CompareAndSwap(nil, &r) }

func (s *connState) closeReason() string {
	if r := s.reason.Load(); r != nil {
		return *r
	}
	return ""
}

type stateful interface{ connState() *connState }

func stateOf(c net.Conn) *connState {
	if s, ok := c.(stateful); ok {
		return s.connState()
	}
	return nil
}

// tracker remembers the live connections of one listener so Close can end
// the ones mochi does not know yet (still before CONNECT) instead of
// waiting for their deadline, and counts the goroutines that may call
// mochi's EstablishConnection. Close waits for those: mochi's Server.Close
// waits on a WaitGroup that EstablishConnection adds to, and an Add racing
// that Wait is a WaitGroup misuse.
type tracker struct {
	mu     sync.Mutex
	conns  map[*trackedConn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// track registers c; false once the tracker closed.
func (t *tracker) track(c *trackedConn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	if t.conns == nil {
		t.conns = make(map[*trackedConn]struct{})
	}
	t.conns[c] = struct{}{}
	return true
}

// acquire counts a goroutine about to serve a connection; false once the
// tracker closed. release ends it.
func (t *tracker) acquire() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	t.wg.Add(1)
	return true
}

func (t *tracker) release() { t.wg.Done() }

func (t *tracker) remove(c *trackedConn) {
	t.mu.Lock()
	delete(t.conns, c)
	t.mu.Unlock()
}

// close refuses new connections, ends every tracked one and waits for the
// goroutines serving them.
func (t *tracker) close() {
	t.mu.Lock()
	t.closed = true
	conns := make([]*trackedConn, 0, len(t.conns))
	for c := range t.conns {
		conns = append(conns, c)
	}
	t.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
	t.wg.Wait()
}

// trackedConn is an accepted connection with a CONNECT deadline. mochi's
// refreshDeadline replaces the deadline with the keepalive one once the
// CONNECT is read.
type trackedConn struct {
	net.Conn
	t     *tracker
	st    *connState
	close sync.Once
}

func (c *trackedConn) connState() *connState { return c.st }

func (c *trackedConn) Close() error {
	var err error
	c.close.Do(func() {
		err = c.Conn.Close()
		c.t.remove(c)
	})
	return err
}

// acceptLoop accepts until ln is closed, retrying temporary errors (such as
// running out of file descriptors) with a capped backoff like net/http.
func acceptLoop(ln net.Listener, closing *atomic.Bool, log *slog.Logger, serve func(net.Conn)) {
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if closing.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporary(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				log.Warn("accept failed; retrying", "error", err, "retry_in", backoff)
				time.Sleep(backoff)
				continue
			}
			log.Error("accept failed; listener stopped", "error", err)
			return
		}
		backoff = 0
		serve(c)
	}
}

func isTemporary(err error) bool {
	t, ok := err.(interface{ Temporary() bool })
	return ok && t.Temporary()
}

// tcpListener is a mochi listener for plain TCP and TLS. It replaces
// listeners.TCP/Net so that the broker owns the net.Listener (":0" works),
// every connection gets a CONNECT deadline, and the result of mochi's
// EstablishConnection is seen (to count why connections close).
type tcpListener struct {
	id       string
	ln       net.Listener
	tlsConf  *tls.Config // nil: plain TCP
	b        *Broker
	t        tracker
	closing  atomic.Bool
	serveWG  sync.WaitGroup
	closeOne sync.Once
}

var _ listeners.Listener = (*tcpListener)(nil)

func (l *tcpListener) ID() string      { return l.id }
func (l *tcpListener) Address() string { return l.ln.Addr().String() }
func (l *tcpListener) Protocol() string {
	if l.tlsConf != nil {
		return "tls"
	}
	return "tcp"
}
func (l *tcpListener) Init(*slog.Logger) error { return nil }

func (l *tcpListener) Serve(establish listeners.EstablishFn) {
	defer l.serveWG.Done() // Added by Broker.Start before mochi calls Serve.
	acceptLoop(l.ln, &l.closing, l.b.log, func(raw net.Conn) {
		_ = raw.SetDeadline(time.Now().Add(l.b.cfg.ConnectTimeout))
		st := &connState{}
		c := raw
		if l.tlsConf != nil {
			// The handshake runs on mochi's first read, under the deadline.
			st.tls = tls.Server(raw, l.tlsConf)
			c = st.tls
		}
		tc := &trackedConn{Conn: c, t: &l.t, st: st}
		if !l.t.track(tc) || !l.t.acquire() {
			_ = tc.Close()
			return
		}
		go func() {
			defer l.t.release()
			err := establish(l.id, tc)
			l.b.connectionClosed(st, err)
			_ = tc.Close()
		}()
	})
}

// Close stops accepting, disconnects the listener's clients (DISCONNECT
// 0x8B to MQTT 5 clients), closes what is left and waits for the
// connection goroutines. mochi's CloseFn is not used: its
// Clients.GetByListener takes a read lock twice, which deadlocks when a
// client connects or leaves in between.
func (l *tcpListener) Close(listeners.CloseFn) {
	l.closeOne.Do(func() {
		l.closing.Store(true)
		_ = l.ln.Close()
		l.b.disconnectClients(l.id)
		l.t.close()
	})
}

// wait blocks until the accept loop ended (Close waited for the rest).
func (l *tcpListener) wait() { l.serveWG.Wait() }

// wsListener serves MQTT over WebSocket (subprotocol "mqtt") on "/mqtt"
// and "/". Like mochi's listeners.Websocket, but on a listener the broker
// bound, with the CONNECT deadline, and closing hijacked connections on
// Close (http.Server.Shutdown does not track them).
type wsListener struct {
	id        string
	ln        net.Listener // accepts *trackedConn
	b         *Broker
	t         tracker
	srv       *http.Server
	upgrader  websocket.Upgrader
	establish atomic.Pointer[listeners.EstablishFn]
	closing   atomic.Bool
	serveWG   sync.WaitGroup
	closeOne  sync.Once
}

var _ listeners.Listener = (*wsListener)(nil)

func newWSListener(id string, ln net.Listener, b *Broker) *wsListener {
	l := &wsListener{id: id, b: b}
	l.ln = &trackingListener{Listener: ln, l: l}
	l.upgrader = websocket.Upgrader{
		HandshakeTimeout: b.cfg.ConnectTimeout,
		Subprotocols:     []string{"mqtt", "mqttv3.1"},
		// Devices are not browsers and authenticate with their token, so
		// the Origin header carries no authority here.
		CheckOrigin: func(*http.Request) bool { return true },
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/mqtt", l.handle)
	mux.HandleFunc("/", l.handle)
	l.srv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: b.cfg.ConnectTimeout,
		IdleTimeout:       b.cfg.ConnectTimeout, // for clients that never upgrade
		ErrorLog:          slog.NewLogLogger(b.log.Handler(), slog.LevelDebug),
	}
	return l
}

func (l *wsListener) ID() string              { return l.id }
func (l *wsListener) Address() string         { return l.ln.Addr().String() }
func (l *wsListener) Protocol() string        { return "ws" }
func (l *wsListener) Init(*slog.Logger) error { return nil }

func (l *wsListener) Serve(establish listeners.EstablishFn) {
	defer l.serveWG.Done()
	l.establish.Store(&establish)
	err := l.srv.Serve(l.ln)
	if err != nil && !errors.Is(err, http.ErrServerClosed) && !l.closing.Load() {
		l.b.log.Error("websocket listener stopped", "error", err)
	}
}

func (l *wsListener) handle(w http.ResponseWriter, r *http.Request) {
	est := l.establish.Load()
	if est == nil || !l.t.acquire() {
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
		return
	}
	defer l.t.release()
	ws, err := l.upgrader.Upgrade(w, r, nil) // writes the HTTP error itself
	if err != nil {
		l.b.m.closed.WithLabelValues("websocket_handshake").Inc()
		return
	}
	raw, ok := ws.UnderlyingConn().(*trackedConn)
	if !ok { // cannot happen: the server accepts only from trackingListener
		_ = ws.Close()
		return
	}
	// net/http clears deadlines on hijack; restore the CONNECT deadline.
	_ = raw.SetDeadline(time.Now().Add(l.b.cfg.ConnectTimeout))
	err = (*est)(l.id, &wsConn{Conn: raw, ws: ws})
	l.b.connectionClosed(raw.st, err)
	_ = raw.Close()
}

func (l *wsListener) Close(listeners.CloseFn) {
	l.closeOne.Do(func() {
		l.closing.Store(true)
		_ = l.srv.Close() // closes the listener and connections not hijacked
		l.b.disconnectClients(l.id)
		l.t.close()
	})
}

func (l *wsListener) wait() { l.serveWG.Wait() }

// trackingListener gives the HTTP server tracked connections with the
// CONNECT deadline already set (it covers the HTTP upgrade too).
type trackingListener struct {
	net.Listener
	l *wsListener
}

func (tl *trackingListener) Accept() (net.Conn, error) {
	for {
		c, err := tl.Listener.Accept()
		if err != nil {
			return nil, err
		}
		_ = c.SetDeadline(time.Now().Add(tl.l.b.cfg.ConnectTimeout))
		tc := &trackedConn{Conn: c, t: &tl.l.t, st: &connState{}}
		if !tl.l.t.track(tc) {
			_ = c.Close()
			continue
		}
		return tc, nil
	}
}

// wsConn adapts a WebSocket to the byte stream mochi reads: MQTT packets
// travel in binary messages, and one packet may span messages or one
// message hold several (MQTT 5 §6.0).
type wsConn struct {
	net.Conn // the underlying *trackedConn: deadlines, addresses, Close
	ws       *websocket.Conn
	r        io.Reader
}

func (c *wsConn) connState() *connState { return stateOf(c.Conn) }

func (c *wsConn) Read(p []byte) (int, error) {
	for {
		if c.r == nil {
			op, r, err := c.ws.NextReader()
			if err != nil {
				return 0, err
			}
			if op != websocket.BinaryMessage {
				return 0, errors.New("websocket: text message, MQTT needs binary")
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if errors.Is(err, io.EOF) {
			c.r = nil
			err = nil
			if n == 0 {
				continue
			}
		}
		return n, err
	}
}

func (c *wsConn) Write(p []byte) (int, error) {
	if err := c.ws.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}
