package extmqtt

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fieldhub/fieldhub/broker"
	"github.com/fieldhub/fieldhub/internal/testkit"
	"github.com/fieldhub/fieldhub/internal/testkit/mosquittotest"
	"github.com/fieldhub/fieldhub/telemetry"
)

const wait = 30 * time.Second // generous: the machine is shared

// recorder is a handler that notes what it was given.
type recorder struct {
	mu    sync.Mutex
	seen  map[int]int // payload number -> times handled successfully
	tried map[int]int
	dups  int
	fn    func(n int, m broker.Message) error // decides the outcome; nil = nil
}

func newRecorder(fn func(int, broker.Message) error) *recorder {
	return &recorder{seen: map[int]int{}, tried: map[int]int{}, fn: fn}
}

func (r *recorder) handle(_ context.Context, m broker.Message) error {
	n, err := strconv.Atoi(string(m.Payload))
	if err != nil {
		return fmt.Errorf("%w: bad payload %q", broker.ErrRejected, m.Payload)
	}
	var out error
	if r.fn != nil {
		out = r.fn(n, m)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tried[n]++
	if out == nil || errors.Is(out, broker.ErrRejected) {
		r.seen[n]++
		if r.seen[n] > 1 {
			r.dups++
		}
	}
	return out
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.seen)
}

func (r *recorder) has(n int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seen[n] > 0
}

func startClient(t *testing.T, o Options, kind telemetry.TopicKind, h broker.Handler) *Client {
	t.Helper()
	if o.Registerer == nil {
		o.Registerer = prometheus.NewRegistry()
	}
	c, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	c.Handle(kind, h)
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Stop(context.Background()) })
	return c
}

// publisher is a plain MQTT client standing in for devices.
func publisher(t *testing.T, url, id string) paho.Client {
	t.Helper()
	cl := paho.NewClient(paho.NewClientOptions().AddBroker(url).SetClientID(id).SetCleanSession(true).SetOrderMatters(false))
	if tok := cl.Connect(); !tok.WaitTimeout(wait) || tok.Error() != nil {
		t.Fatalf("publisher connect: %v", tok.Error())
	}
	t.Cleanup(func() { cl.Disconnect(100) })
	return cl
}

func publishNumbered(t *testing.T, cl paho.Client, from, to int) {
	t.Helper()
	var toks []paho.Token
	for i := from; i < to; i++ {
		toks = append(toks, cl.Publish(telemetry.TelemetryTopic(fmt.Sprintf("dev-%d", i%7)), 1, false, strconv.Itoa(i)))
	}
	for _, tok := range toks {
		if !tok.WaitTimeout(wait) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
}

// TestSharedGroupSplitsTheStream: two clients in one shared subscription
// group each get a share of a numbered QoS 1 stream, together all of it,
// none twice; handlers finish out of order, yet every PUBACK leaves in
// the order the PUBLISHes arrived (observed on the wire through a proxy).
func TestSharedGroupSplitsTheStream(t *testing.T) {
	mq := mosquittotest.Start(t, mosquittotest.Options{})
	px := startProxy(t, mq.Addr)

	slow := func(int, broker.Message) error {
		time.Sleep(time.Duration(rand.IntN(3000)) * time.Microsecond)
		return nil
	}
	ra, rb := newRecorder(slow), newRecorder(slow)
	regA := prometheus.NewRegistry()
	startClient(t, Options{URL: "tcp://" + px.addr, ClientID: "worker-a", Group: "fieldhub-ingest", Name: "ingest", Registerer: regA},
		telemetry.TopicTelemetry, ra.handle)
	startClient(t, Options{URL: mq.URL, ClientID: "worker-b", Group: "fieldhub-ingest", Name: "ingest"},
		telemetry.TopicTelemetry, rb.handle)

	const n = 600
	publishNumbered(t, publisher(t, mq.URL, "dev-pub"), 0, n)
	testkit.Eventually(t, wait, func() bool { return ra.count()+rb.count() >= n }, "both workers to take the whole stream")

	if ra.count() == 0 || rb.count() == 0 {
		t.Errorf("shares: a=%d b=%d; each worker should get some", ra.count(), rb.count())
	}
	for i := 0; i < n; i++ {
		if ra.has(i) == rb.has(i) {
			t.Errorf("reading %d: a=%v b=%v, want exactly one", i, ra.has(i), rb.has(i))
		}
	}
	if ra.dups+rb.dups != 0 {
		t.Errorf("duplicates without failures: %d", ra.dups+rb.dups)
	}
	// Every message worker-a took was acknowledged, in arrival order.
	testkit.Eventually(t, wait, func() bool { return px.acked() == ra.count() }, "worker-a's PUBACKs")
	if err := px.orderError(); err != nil {
		t.Error(err)
	}
	if got := counter(t, regA, "acked"); int(got) != ra.count() {
		t.Errorf("acked metric = %v, want %d", got, ra.count())
	}
}

// TestUnacknowledgedAreRedelivered: a worker whose handler fails (a store
// that is down) acknowledges nothing from the first failure on (acks are
// in order), so the broker stops sending once its in-flight window is
// full; after the worker stops, a worker resuming its session (same client
// id) gets every message it did not acknowledge, and nothing is lost.
// Rejected messages count as taken.
func TestUnacknowledgedAreRedelivered(t *testing.T) {
	mq := mosquittotest.Start(t, mosquittotest.Options{})
	failing := newRecorder(func(n int, _ broker.Message) error {
		switch {
		case n%10 == 3:
			return errors.New("store down")
		case n%10 == 5:
			return fmt.Errorf("%w: invalid", broker.ErrRejected)
		}
		return nil
	})
	o := Options{URL: mq.URL, ClientID: "worker-r", Group: "fieldhub-ingest", RetryBackoff: Backoff{Min: 5 * time.Millisecond, Max: 20 * time.Millisecond}}
	c1 := startClient(t, o, telemetry.TopicTelemetry, failing.handle)

	const n = 200
	publishNumbered(t, publisher(t, mq.URL, "dev-pub"), 0, n)
	tried := func() int {
		failing.mu.Lock()
		defer failing.mu.Unlock()
		return len(failing.tried)
	}
	// Mosquitto's in-flight window (max_inflight_messages, 20) fills up
	// with unacknowledged messages: the worker stalls.
	testkit.Eventually(t, wait, func() bool { return tried() >= 20 }, "the first worker to fill the in-flight window")
	time.Sleep(300 * time.Millisecond)
	if got := tried(); got >= n {
		t.Fatalf("the failing worker was given all %d messages; the broker should stop at its in-flight window", got)
	}
	if err := c1.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}

	healthy := newRecorder(nil)
	startClient(t, o, telemetry.TopicTelemetry, healthy.handle)
	testkit.Eventually(t, wait, func() bool {
		for i := 0; i < n; i++ {
			if !failing.has(i) && !healthy.has(i) {
				return false
			}
		}
		return true
	}, "every message to be taken by one of the two workers")
	failing.mu.Lock()
	defer failing.mu.Unlock()
	for n := range failing.tried {
		if n%10 == 3 && !healthy.has(n) {
			t.Errorf("message %d failed and was not redelivered", n)
		}
	}
}

// TestPublish: hub-to-device messages reach a subscriber, retained when
// asked, and Publish waits for the broker's PUBACK.
func TestPublish(t *testing.T) {
	mq := mosquittotest.Start(t, mosquittotest.Options{})
	c := startClient(t, Options{URL: mq.URL, ClientID: "cmd", Group: "fieldhub-command", CleanSession: true},
		telemetry.TopicReply, func(context.Context, broker.Message) error { return nil })
	if err := c.Publish(telemetry.TwinDesiredTopic("d1"), []byte(`{"v":1}`), broker.PublishOptions{QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}
	got := make(chan paho.Message, 4)
	sub := publisher(t, mq.URL, "d1")
	if tok := sub.Subscribe("devices/d1/#", 1, func(_ paho.Client, m paho.Message) { got <- m }); !tok.WaitTimeout(wait) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	select {
	case m := <-got:
		if !m.Retained() || string(m.Payload()) != `{"v":1}` {
			t.Fatalf("retained desired: %q retained=%v", m.Payload(), m.Retained())
		}
	case <-time.After(wait):
		t.Fatal("retained message not delivered")
	}
	if err := c.Publish(telemetry.CommandTopic("d1", "reboot"), []byte(`{"id":"c1"}`), broker.PublishOptions{QoS: 1}); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got:
		if m.Topic() != "devices/d1/commands/reboot" {
			t.Fatalf("topic %q", m.Topic())
		}
	case <-time.After(wait):
		t.Fatal("command not delivered")
	}
}

// TestStartRefused: wrong credentials stop Start with an error that says
// so; the right ones work. (A SUBACK failure code is checked too, but
// Mosquitto 2.0's acl_file grants every SUBSCRIBE and filters deliveries
// instead, so it cannot be provoked here.)
func TestStartRefused(t *testing.T) {
	mq := mosquittotest.Start(t, mosquittotest.Options{
		Users: map[string]string{"fieldhub-ingest": "s3cret-ingest"},
		ACL:   "user fieldhub-ingest\ntopic read devices/+/telemetry\ntopic write devices/+/errors\n",
	})
	h := func(context.Context, broker.Message) error { return nil }
	for _, tc := range []struct {
		name, user, pass, want string
	}{
		{"wrong password", "fieldhub-ingest", "nope", "not Authorized"},
		{"unknown user", "nobody", "s3cret-nobody", "not Authorized"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New(Options{URL: mq.URL, ClientID: "w-" + tc.user, Username: tc.user, Password: tc.pass, Group: "fieldhub-ingest",
				ConnectTimeout: 5 * time.Second, PublishTimeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			c.Handle(telemetry.TopicTelemetry, h)
			err = c.Start(context.Background())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Start: %v, want an error containing %q", err, tc.want)
			}
		})
	}
	r := newRecorder(nil)
	startClient(t, Options{URL: mq.URL, ClientID: "w-ok", Username: "fieldhub-ingest", Password: "s3cret-ingest", Group: "fieldhub-ingest"},
		telemetry.TopicTelemetry, r.handle)
}

// TestUnknownTopicDropped: a message whose topic the contract does not
// allow (a device id with '$') is acknowledged, counted and dropped, not
// redelivered forever; the stream goes on.
func TestUnknownTopicDropped(t *testing.T) {
	mq := mosquittotest.Start(t, mosquittotest.Options{})
	reg := prometheus.NewRegistry()
	r := newRecorder(nil)
	startClient(t, Options{URL: mq.URL, ClientID: "w", Group: "g", Registerer: reg}, telemetry.TopicTelemetry, r.handle)
	pub := publisher(t, mq.URL, "p")
	for _, topic := range []string{"devices/a$b/telemetry", "devices/ok-1/telemetry"} {
		if tok := pub.Publish(topic, 1, false, "7"); !tok.WaitTimeout(wait) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
	}
	testkit.Eventually(t, wait, func() bool { return r.has(7) }, "the valid message")
	testkit.Eventually(t, wait, func() bool {
		return counter(t, reg, "unknown_topic") == 1
	}, "the unknown topic to be counted")
}

func TestDefaultClientID(t *testing.T) {
	a1, err := DefaultClientID("/var/lib/fieldhub/w1")
	if err != nil {
		t.Fatal(err)
	}
	a2, _ := DefaultClientID("/var/lib/fieldhub/w1/")
	b, _ := DefaultClientID("/var/lib/fieldhub/w2")
	if a1 != a2 || a1 == b || !strings.HasPrefix(a1, "fieldhub-") {
		t.Fatalf("ids %q %q %q: want stable per data_dir, distinct across", a1, a2, b)
	}
}

func TestNewChecksOptions(t *testing.T) {
	for _, o := range []Options{
		{ClientID: "x"},
		{URL: "tcp://b:1883"},
		{URL: "http://b:1883", ClientID: "x"},
		{URL: "tcp://b:1883", ClientID: "x", Group: "a/b"},
	} {
		if _, err := New(o); err == nil {
			t.Errorf("New(%+v) = nil error", o)
		}
	}
}

// counter reads fieldhub_extmqtt_messages_total{result} from reg.
func counter(t *testing.T, reg *prometheus.Registry, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "fieldhub_extmqtt_messages_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return -1
}

// proxy sits between a client and the broker and checks the MQTT stream:
// the client must acknowledge QoS 1 PUBLISHes in the order they arrived
// [MQTT-4.6.0-2].
type proxy struct {
	addr string
	mu   sync.Mutex
	out  []uint16 // packet ids of QoS 1 PUBLISHes sent to the client, not yet acknowledged
	n    int      // PUBACKs seen
	bad  error
}

func startProxy(t *testing.T, upstream string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{addr: ln.Addr().String()}
	var wg sync.WaitGroup
	var conns []net.Conn
	var cmu sync.Mutex
	t.Cleanup(func() {
		ln.Close()
		cmu.Lock()
		for _, c := range conns {
			c.Close()
		}
		cmu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", upstream)
			if err != nil {
				c.Close()
				continue
			}
			cmu.Lock()
			conns = append(conns, c, u)
			cmu.Unlock()
			wg.Add(2)
			go func() { defer wg.Done(); p.pipe(u, c, p.fromBroker); c.Close() }()
			go func() { defer wg.Done(); p.pipe(c, u, p.fromClient); u.Close() }()
		}
	}()
	return p
}

// pipe copies src to dst packet by packet, showing each to see.
func (p *proxy) pipe(src, dst net.Conn, see func(typ byte, body []byte)) {
	for {
		var h [1]byte
		if _, err := io.ReadFull(src, h[:]); err != nil {
			return
		}
		var rem, mul int
		hdr := []byte{h[0]}
		for i := 0; i < 4; i++ {
			var b [1]byte
			if _, err := io.ReadFull(src, b[:]); err != nil {
				return
			}
			hdr = append(hdr, b[0])
			rem += int(b[0]&0x7f) << mul
			mul += 7
			if b[0]&0x80 == 0 {
				break
			}
		}
		body := make([]byte, rem)
		if _, err := io.ReadFull(src, body); err != nil {
			return
		}
		see(h[0], body)
		if _, err := dst.Write(append(hdr, body...)); err != nil {
			return
		}
	}
}

func (p *proxy) fromBroker(h byte, body []byte) {
	if h>>4 != 3 || (h>>1)&3 != 1 || len(body) < 2 { // QoS 1 PUBLISH
		return
	}
	tl := int(binary.BigEndian.Uint16(body))
	if len(body) < 2+tl+2 {
		return
	}
	p.mu.Lock()
	p.out = append(p.out, binary.BigEndian.Uint16(body[2+tl:]))
	p.mu.Unlock()
}

func (p *proxy) fromClient(h byte, body []byte) {
	if h>>4 != 4 || len(body) < 2 { // PUBACK
		return
	}
	id := binary.BigEndian.Uint16(body)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n++
	if len(p.out) == 0 || p.out[0] != id {
		if p.bad == nil {
			p.bad = fmt.Errorf("PUBACK %d out of order: waiting for %v", id, p.out[:min(len(p.out), 5)])
		}
		for i, o := range p.out {
			if o == id {
				p.out = append(p.out[:i], p.out[i+1:]...)
				break
			}
		}
		return
	}
	p.out = p.out[1:]
}

func (p *proxy) acked() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n
}

func (p *proxy) orderError() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.bad
}
