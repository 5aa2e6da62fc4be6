package broker

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/fieldhub/fieldhub/internal/testkit"
	"github.com/fieldhub/fieldhub/registry"
	"github.com/fieldhub/fieldhub/telemetry"
)

// The tests run against a real *registry.Registry (SQLite file in a temp
// dir) and real MQTT clients: mosquitto_pub/mosquitto_sub, paho, and a
// raw-packet client written from the spec for exact reason codes.

const waitFor = 20 * time.Second // generous bound for "eventually"

type env struct {
	t      *testing.T
	b      *Broker
	reg    *registry.Registry
	prom   *prometheus.Registry
	tokens map[string]string
	addr   string // TCP
}

type envOpt func(*Config, *Broker)

func newRegistry(t *testing.T, ids ...string) (*registry.Registry, map[string]string) {
	t.Helper()
	ctx := context.Background()
	reg, err := registry.Open(ctx, filepath.Join(t.TempDir(), "registry.db"), nil)
	if err != nil {
		t.Fatalf("open registry: %v", err)
	}
	t.Cleanup(func() { reg.Close() })
	tokens := map[string]string{}
	for _, id := range ids {
		_, tok, err := reg.CreateDevice(ctx, registry.DeviceSpec{ID: id, Type: "sensor"})
		if err != nil {
			t.Fatalf("create device %s: %v", id, err)
		}
		tokens[id] = tok
	}
	return reg, tokens
}

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// newEnv starts a broker on 127.0.0.1:0 with the devices "dev-a", "dev-b"
// and "dev-c" registered. setup runs before Start (handlers, observers).
func newEnv(t *testing.T, cfg Config, setup func(*Broker)) *env {
	t.Helper()
	reg, tokens := newRegistry(t, "dev-a", "dev-b", "dev-c")
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	prom := prometheus.NewRegistry()
	b, err := New(cfg, Deps{Auth: reg, Presence: reg, Logger: testLogger(t), Registerer: prom})
	if err != nil {
		t.Fatalf("new broker: %v", err)
	}
	if setup != nil {
		setup(b)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatalf("start broker: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := b.Stop(ctx); err != nil {
			t.Errorf("stop broker: %v", err)
		}
	})
	return &env{t: t, b: b, reg: reg, prom: prom, tokens: tokens, addr: b.Addrs().TCP}
}

func (e *env) counter(c prometheus.Collector) float64 { return testutil.ToFloat64(c) }

// eventually polls cond until it holds or waitFor passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func hostPort(t *testing.T, addr string) (string, string) {
	t.Helper()
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return h, p
}

// runTool runs a mosquitto client with a timeout and returns its output and
// exit error.
func runTool(t *testing.T, name string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	bin := testkit.Binary(t, name)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// startSub starts mosquitto_sub as device id in the background; its
// stdout lines arrive on the returned channel. It returns once the broker
// holds the subscription (mosquitto_sub's -d output is block-buffered in a
// pipe, so the broker is asked instead).
func (e *env) startSub(id string, args ...string) <-chan string {
	t := e.t
	t.Helper()
	bin := testkit.Binary(t, "mosquitto_sub")
	host, port := hostPort(t, e.addr)
	args = append([]string{"-h", host, "-p", port, "-i", id, "-u", id, "-P", e.tokens[id]}, args...)
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 100)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		_ = cmd.Wait()
	})
	deadline := time.Now().Add(waitFor)
	for {
		if cl, ok := e.b.srv.Clients.Get(id); ok && !cl.Closed() && cl.State.Subscriptions.Len() > 0 {
			return lines
		}
		select {
		case <-done:
			t.Fatalf("mosquitto_sub %v exited before subscribing: %s", args, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("mosquitto_sub %v did not subscribe: %s", args, stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func recvLine(t *testing.T, lines <-chan string) string {
	t.Helper()
	select {
	case l, ok := <-lines:
		if !ok {
			t.Fatal("subscriber exited")
		}
		return l
	case <-time.After(waitFor):
		t.Fatal("timed out waiting for a message")
	}
	return ""
}

// ---- raw MQTT client (MQTT 3.1.1 and 5.0, written from the spec) ----

const (
	pConnect     = 1
	pConnack     = 2
	pPublish     = 3
	pPuback      = 4
	pSubscribe   = 8
	pSuback      = 9
	pPingreq     = 12
	pPingresp    = 13
	pDisconnect  = 14
	propExpiry   = 0x02
	propCType    = 0x03
	propRespTop  = 0x08
	propCorrData = 0x09
	propMaxPkt   = 0x27
)

type rawConn struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
	v byte // 4 = 3.1.1, 5
}

type connectOpts struct {
	ClientID       string
	User, Pass     *string
	KeepAlive      uint16
	WillTopic      string
	WillPayload    string
	CleanStart     bool
	NoCleanSession bool
}

func strp(s string) *string { return &s }

func appendStr(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

func appendVarint(b []byte, n int) []byte {
	for {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 0x80
		}
		b = append(b, d)
		if n == 0 {
			return b
		}
	}
}

func packet(typeFlags byte, body []byte) []byte {
	return append(appendVarint([]byte{typeFlags}, len(body)), body...)
}

func connectPacket(v byte, o connectOpts) []byte {
	var b []byte
	b = appendStr(b, "MQTT")
	b = append(b, v)
	flags := byte(0)
	if !o.NoCleanSession {
		flags |= 0x02
	}
	if o.WillTopic != "" {
		flags |= 0x04 | 0x08 // will, QoS 1
	}
	if o.User != nil {
		flags |= 0x80
	}
	if o.Pass != nil {
		flags |= 0x40
	}
	b = append(b, flags)
	b = binary.BigEndian.AppendUint16(b, o.KeepAlive)
	if v == 5 {
		b = append(b, 0) // no properties
	}
	b = appendStr(b, o.ClientID)
	if o.WillTopic != "" {
		if v == 5 {
			b = append(b, 0) // no will properties
		}
		b = appendStr(b, o.WillTopic)
		b = appendStr(b, o.WillPayload)
	}
	if o.User != nil {
		b = appendStr(b, *o.User)
	}
	if o.Pass != nil {
		b = appendStr(b, *o.Pass)
	}
	return packet(pConnect<<4, b)
}

func dialRaw(t *testing.T, addr string, v byte) *rawConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, waitFor)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawConn{t: t, c: c, r: bufio.NewReader(c), v: v}
}

func (rc *rawConn) write(p []byte) {
	rc.t.Helper()
	_ = rc.c.SetWriteDeadline(time.Now().Add(waitFor))
	if _, err := rc.c.Write(p); err != nil {
		rc.t.Fatalf("write: %v", err)
	}
}

type rawPacket struct {
	typ, flags byte
	body       []byte
}

// read reads one packet, failing the test on error.
func (rc *rawConn) read() rawPacket {
	rc.t.Helper()
	p, err := rc.tryRead(waitFor)
	if err != nil {
		rc.t.Fatalf("read packet: %v", err)
	}
	return p
}

func (rc *rawConn) tryRead(d time.Duration) (rawPacket, error) {
	_ = rc.c.SetReadDeadline(time.Now().Add(d))
	h, err := rc.r.ReadByte()
	if err != nil {
		return rawPacket{}, err
	}
	n, mul := 0, 1
	for i := 0; ; i++ {
		d, err := rc.r.ReadByte()
		if err != nil {
			return rawPacket{}, err
		}
		n += int(d&0x7f) * mul
		mul *= 128
		if d&0x80 == 0 {
			break
		}
		if i == 3 {
			return rawPacket{}, errors.New("malformed remaining length")
		}
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(rc.r, body); err != nil {
		return rawPacket{}, err
	}
	return rawPacket{typ: h >> 4, flags: h & 0x0f, body: body}, nil
}

// connect sends CONNECT and returns the CONNACK reason/return code.
func (rc *rawConn) connect(o connectOpts) byte {
	rc.t.Helper()
	if o.KeepAlive == 0 {
		o.KeepAlive = 60
	}
	rc.write(connectPacket(rc.v, o))
	p := rc.read()
	if p.typ != pConnack || len(p.body) < 2 {
		rc.t.Fatalf("expected CONNACK, got type %d body %x", p.typ, p.body)
	}
	return p.body[1]
}

// connectDevice connects as a registered device and requires success.
func (e *env) rawDevice(id string, v byte) *rawConn {
	e.t.Helper()
	rc := dialRaw(e.t, e.addr, v)
	if code := rc.connect(connectOpts{ClientID: id, User: strp(id), Pass: strp(e.tokens[id])}); code != 0 {
		e.t.Fatalf("connect %s v%d: code %#x", id, v, code)
	}
	return rc
}

type props map[byte][]byte

func parseProps(b []byte) (props, []byte, error) {
	n, mul, i := 0, 1, 0
	for ; ; i++ {
		if i >= len(b) {
			return nil, nil, errors.New("short properties length")
		}
		n += int(b[i]&0x7f) * mul
		mul *= 128
		if b[i]&0x80 == 0 {
			break
		}
	}
	b = b[i+1:]
	if n > len(b) {
		return nil, nil, errors.New("short properties")
	}
	ps, rest := b[:n], b[n:]
	out := props{}
	for len(ps) > 0 {
		id := ps[0]
		ps = ps[1:]
		switch id {
		case 0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A: // byte
			out[id], ps = ps[:1], ps[1:]
		case 0x13, 0x21, 0x22, 0x23: // two-byte integer
			out[id], ps = ps[:2], ps[2:]
		case 0x02, 0x11, 0x18, 0x27: // four-byte integer
			out[id], ps = ps[:4], ps[4:]
		case 0x0B: // varint
			j := 0
			for ps[j]&0x80 != 0 {
				j++
			}
			out[id], ps = ps[:j+1], ps[j+1:]
		case 0x26: // user property: two strings
			l1 := int(binary.BigEndian.Uint16(ps))
			l2 := int(binary.BigEndian.Uint16(ps[2+l1:]))
			out[id], ps = ps[:4+l1+l2], ps[4+l1+l2:]
		default: // string or binary data
			l := int(binary.BigEndian.Uint16(ps))
			out[id], ps = ps[2:2+l], ps[2+l:]
		}
	}
	return out, rest, nil
}

func publishPacket(v byte, topic string, payload []byte, qos byte, id uint16, retain bool) []byte {
	var b []byte
	b = appendStr(b, topic)
	if qos > 0 {
		b = binary.BigEndian.AppendUint16(b, id)
	}
	if v == 5 {
		b = append(b, 0)
	}
	b = append(b, payload...)
	flags := qos << 1
	if retain {
		flags |= 1
	}
	return packet(pPublish<<4|flags, b)
}

type rawPublish struct {
	topic   string
	id      uint16
	qos     byte
	retain  bool
	props   props
	payload []byte
}

func (rc *rawConn) parsePublish(p rawPacket) rawPublish {
	rc.t.Helper()
	if p.typ != pPublish {
		rc.t.Fatalf("expected PUBLISH, got type %d", p.typ)
	}
	b := p.body
	l := int(binary.BigEndian.Uint16(b))
	out := rawPublish{topic: string(b[2 : 2+l]), qos: (p.flags >> 1) & 3, retain: p.flags&1 == 1}
	b = b[2+l:]
	if out.qos > 0 {
		out.id = binary.BigEndian.Uint16(b)
		b = b[2:]
	}
	if rc.v == 5 {
		ps, rest, err := parseProps(b)
		if err != nil {
			rc.t.Fatalf("publish properties: %v", err)
		}
		out.props, b = ps, rest
	}
	out.payload = b
	return out
}

// subscribe sends one SUBSCRIBE and returns the SUBACK codes.
func (rc *rawConn) subscribe(id uint16, filters ...string) []byte {
	rc.t.Helper()
	var b []byte
	b = binary.BigEndian.AppendUint16(b, id)
	if rc.v == 5 {
		b = append(b, 0)
	}
	for _, f := range filters {
		b = appendStr(b, f)
		b = append(b, 1) // QoS 1
	}
	rc.write(packet(pSubscribe<<4|0x02, b))
	for {
		p := rc.read()
		if p.typ != pSuback {
			continue // e.g. a retained PUBLISH racing ahead; not expected here
		}
		if got := binary.BigEndian.Uint16(p.body); got != id {
			rc.t.Fatalf("SUBACK for id %d, want %d", got, id)
		}
		rest := p.body[2:]
		if rc.v == 5 {
			_, r, err := parseProps(rest)
			if err != nil {
				rc.t.Fatal(err)
			}
			rest = r
		}
		return rest
	}
}

// puback parses a PUBACK: packet id and reason code (0 when omitted).
func pubackOf(t *testing.T, p rawPacket) (uint16, byte) {
	t.Helper()
	if p.typ != pPuback || len(p.body) < 2 {
		t.Fatalf("expected PUBACK, got type %d body %x", p.typ, p.body)
	}
	code := byte(0)
	if len(p.body) > 2 {
		code = p.body[2]
	}
	return binary.BigEndian.Uint16(p.body), code
}

// ping checks the connection is alive.
func (rc *rawConn) ping() error {
	if _, err := rc.c.Write([]byte{pPingreq << 4, 0}); err != nil {
		return err
	}
	p, err := rc.tryRead(waitFor)
	if err != nil {
		return err
	}
	if p.typ != pPingresp {
		return fmt.Errorf("expected PINGRESP, got type %d", p.typ)
	}
	return nil
}

// closed waits until the server closes the connection and returns the
// packets that arrived before.
func (rc *rawConn) closed() []rawPacket {
	rc.t.Helper()
	var got []rawPacket
	for {
		p, err := rc.tryRead(waitFor)
		if err == nil {
			got = append(got, p)
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			rc.t.Fatalf("connection still open after %s", waitFor)
		}
		return got
	}
}

// noPacket asserts nothing arrives for a short while (an absence check,
// not a performance threshold).
func (rc *rawConn) noPacket(d time.Duration) {
	rc.t.Helper()
	p, err := rc.tryRead(d)
	if err == nil {
		rc.t.Fatalf("unexpected packet type %d body %q", p.typ, p.body)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		rc.t.Fatalf("connection failed: %v", err)
	}
}

// recorder is a Handler that records messages and answers with verdict.
type recorder struct {
	mu      sync.Mutex
	msgs    []Message
	verdict func(Message) error
}

func (r *recorder) handle(_ context.Context, m Message) error {
	r.mu.Lock()
	r.msgs = append(r.msgs, m)
	v := r.verdict
	r.mu.Unlock()
	if v != nil {
		return v(m)
	}
	return nil
}

func (r *recorder) all() []Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Message(nil), r.msgs...)
}

func (r *recorder) setVerdict(f func(Message) error) {
	r.mu.Lock()
	r.verdict = f
	r.mu.Unlock()
}

// handleAll registers rec for every device-to-hub topic kind.
func handleAll(rec *recorder) func(*Broker) {
	return func(b *Broker) {
		for _, k := range []telemetry.TopicKind{telemetry.TopicTelemetry, telemetry.TopicReply, telemetry.TopicTwinReported} {
			b.Handle(k, rec.handle)
		}
	}
}

// events is an Observer recording every call as a line of text.
type events struct {
	mu   sync.Mutex
	list []string
}

func (e *events) add(s string) {
	e.mu.Lock()
	e.list = append(e.list, s)
	e.mu.Unlock()
}

func (e *events) DeviceConnected(id string, v byte) { e.add(fmt.Sprintf("connected %s %d", id, v)) }
func (e *events) DeviceDisconnected(id string)      { e.add("disconnected " + id) }
func (e *events) DeviceSubscribed(id, filter string) {
	e.add("subscribed " + id + " " + filter)
}
func (e *events) Delivered(id, topic string, payload []byte) {
	e.add("delivered " + id + " " + topic + " " + string(payload))
}

// with returns the recorded lines starting with prefix.
func (e *events) with(prefix string) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, s := range e.list {
		if strings.HasPrefix(s, prefix) {
			out = append(out, s)
		}
	}
	return out
}
