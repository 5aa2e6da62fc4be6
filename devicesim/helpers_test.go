package devicesim

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldhub/fieldhub/internal/testkit/mosquittotest"
)

// devicesimBroker is Mosquitto as the devices' tests want it: anonymous,
// no inflight limit (the load tests keep many messages in flight), no
// connection limit.
const devicesimBroker = "max_inflight_messages 0\nmax_connections -1\n"

func startMosquitto(t testing.TB) *mosquittotest.Server {
	t.Helper()
	return mosquittotest.Start(t, mosquittotest.Options{Extra: devicesimBroker})
}

// proxy forwards TCP to a target and can cut every connection through it,
// as a radio link going down would, while the broker stays up.
type proxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	conns map[net.Conn]bool
	down  bool
	wg    sync.WaitGroup
}

func startProxy(t testing.TB, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target, conns: map[net.Conn]bool{}}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(func() {
		ln.Close()
		p.setDown(true)
		p.wg.Wait()
	})
	return p
}

func (p *proxy) url() string { return "tcp://" + p.ln.Addr().String() }

func (p *proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.down {
			p.mu.Unlock()
			c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns[c], p.conns[up] = true, true
		p.wg.Add(2)
		p.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			defer p.wg.Done()
			io.Copy(dst, src)
			dst.Close()
			src.Close()
			p.mu.Lock()
			delete(p.conns, dst)
			delete(p.conns, src)
			p.mu.Unlock()
		}
		go pipe(up, c)
		go pipe(c, up)
	}
}

// setDown cuts every open connection (when down) and refuses new ones
// until set up again.
func (p *proxy) setDown(down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = down
	if down {
		for c := range p.conns {
			c.Close()
		}
	}
}

// msg is one message a test client received.
type msg struct {
	topic   string
	payload []byte
	at      time.Time
	retain  bool
}

// watcher is a plain MQTT client that records what arrives on its filters.
type watcher struct {
	c    paho.Client
	mu   sync.Mutex
	msgs []msg
}

func newWatcher(t testing.TB, broker string, filters ...string) *watcher {
	t.Helper()
	w := &watcher{}
	opts := paho.NewClientOptions().AddBroker(broker).SetClientID(fmt.Sprintf("watcher-%d", time.Now().UnixNano())).
		SetCleanSession(true).SetAutoReconnect(false).SetOrderMatters(true)
	w.c = paho.NewClient(opts)
	if tok := w.c.Connect(); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("watcher connect: %v", tok.Error())
	}
	subs := map[string]byte{}
	for _, f := range filters {
		subs[f] = 1
	}
	tok := w.c.SubscribeMultiple(subs, func(_ paho.Client, m paho.Message) {
		w.mu.Lock()
		w.msgs = append(w.msgs, msg{topic: m.Topic(), payload: append([]byte(nil), m.Payload()...), at: time.Now(), retain: m.Retained()})
		w.mu.Unlock()
	})
	if !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("watcher subscribe: %v", tok.Error())
	}
	t.Cleanup(func() { w.c.Disconnect(100) })
	return w
}

func (w *watcher) all() []msg {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]msg(nil), w.msgs...)
}

func (w *watcher) on(topicPrefix string) []msg {
	var out []msg
	for _, m := range w.all() {
		if strings.HasPrefix(m.topic, topicPrefix) {
			out = append(out, m)
		}
	}
	return out
}

func (w *watcher) publish(t testing.TB, topic string, retained bool, payload string) {
	t.Helper()
	tok := w.c.Publish(topic, 1, retained, payload)
	if !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

// testProfile parses a profile or fails the test.
func testProfile(t testing.TB, y string) *Profile {
	t.Helper()
	p, err := ParseProfile([]byte(y))
	if err != nil {
		t.Fatalf("profile: %v", err)
	}
	return p
}

func startFleet(t testing.TB, cfg FleetConfig) *Fleet {
	t.Helper()
	if cfg.Drain == 0 {
		cfg.Drain = 5 * time.Second
	}
	f, err := NewFleet(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Stop)
	return f
}

// received decodes every telemetry reading a watcher saw, by device.
func received(t testing.TB, w *watcher) (map[string][]Telemetry, int) {
	t.Helper()
	out := map[string][]Telemetry{}
	bad := 0
	for _, m := range w.all() {
		if !strings.HasSuffix(m.topic, "/telemetry") {
			continue
		}
		rs, err := DecodeTelemetry(m.payload)
		if err != nil {
			bad++
			continue
		}
		id := strings.TrimSuffix(strings.TrimPrefix(m.topic, "devices/"), "/telemetry")
		out[id] = append(out[id], rs...)
	}
	return out, bad
}

// testLogger sends debug logs to the test log.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tlogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tlogWriter struct{ t testing.TB }

func (w tlogWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}
