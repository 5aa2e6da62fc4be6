package broker

import (
	"bytes"
	"encoding/binary"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestConnectTimeout: 500 connections that never send CONNECT are all
// closed by the CONNECT deadline, and a real client connects afterwards.
func TestConnectTimeout(t *testing.T) {
	e := newEnv(t, Config{ConnectTimeout: time.Second}, nil)
	const n = 500
	conns := make([]net.Conn, 0, n)
	for range n {
		c, err := net.DialTimeout("tcp", e.addr, waitFor)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		t.Cleanup(func() { c.Close() })
		conns = append(conns, c)
	}
	// One more that sends half a CONNECT (the deadline is for a complete one).
	half := dialRaw(t, e.addr, 4)
	half.write(connectPacket(4, connectOpts{ClientID: "dev-a", User: strp("dev-a"), Pass: strp(e.tokens["dev-a"])})[:10])

	var wg sync.WaitGroup
	errs := make(chan error, n)
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// The server closes: Read returns EOF (or reset) well before
			// our own safety deadline.
			_ = c.SetReadDeadline(time.Now().Add(waitFor))
			_, err := c.Read(make([]byte, 1))
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	if len(errs) > 0 {
		t.Fatalf("%d of %d idle connections were not closed by the server: %v", len(errs), n, <-errs)
	}
	if got := half.closed(); len(got) != 0 {
		t.Fatalf("half CONNECT got %d packets", len(got))
	}
	eventually(t, "connect_timeout counted", func() bool {
		return e.counter(e.b.m.closed.WithLabelValues("connect_timeout")) == n+1
	})
	rc := e.rawDevice("dev-a", 4)
	if err := rc.ping(); err != nil {
		t.Fatalf("real client after the flood: %v", err)
	}
}

// TestPacketTooLarge: a PUBLISH over MaxPacketSize closes only that
// connection.
func TestPacketTooLarge(t *testing.T) {
	rec := &recorder{}
	e := newEnv(t, Config{MaxPacketSize: 1024}, handleAll(rec))
	other := e.rawDevice("dev-b", 4)
	for _, v := range []byte{4, 5} {
		big := e.rawDevice("dev-a", v)
		big.write(publishPacket(v, "devices/dev-a/telemetry", bytes.Repeat([]byte("x"), 2000), 1, 1, false))
		big.closed()
		if err := other.ping(); err != nil {
			t.Fatalf("v%d: other client lost: %v", v, err)
		}
	}
	// Just under the limit passes.
	ok := e.rawDevice("dev-a", 4)
	ok.write(publishPacket(4, "devices/dev-a/telemetry", bytes.Repeat([]byte("y"), 900), 1, 1, false))
	if id, code := pubackOf(t, ok.read()); id != 1 || code != 0 {
		t.Fatalf("PUBACK %d %#x", id, code)
	}
	if msgs := rec.all(); len(msgs) != 1 || len(msgs[0].Payload) != 900 {
		t.Fatalf("handler saw %d messages", len(msgs))
	}
	// A CONNECT over the limit is refused the same way.
	huge := dialRaw(t, e.addr, 4)
	huge.write(connectPacket(4, connectOpts{ClientID: "dev-a", User: strp("dev-a"), Pass: strp(string(bytes.Repeat([]byte("p"), 2000)))}))
	huge.closed()
	eventually(t, "packet_too_large counted", func() bool {
		return e.counter(e.b.m.closed.WithLabelValues("packet_too_large")) == 3
	})
}

// TestHugeRemainingLength: a fixed header claiming 256 MB closes the
// connection without the broker allocating the body. This is a memory
// bound, not a timing threshold: the whole exchange allocates far less
// than the claimed size.
func TestHugeRemainingLength(t *testing.T) {
	e := newEnv(t, Config{}, nil)
	const claimed = 268435455 // 0xFF 0xFF 0xFF 0x7F
	other := e.rawDevice("dev-b", 4)
	for _, tc := range []struct {
		name   string
		header []byte
		auth   bool
	}{
		{"publish after connect", []byte{0x30, 0xFF, 0xFF, 0xFF, 0x7F}, true},
		{"connect", []byte{0x10, 0xFF, 0xFF, 0xFF, 0x7F}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var rc *rawConn
			if tc.auth {
				rc = e.rawDevice("dev-a", 5)
			} else {
				rc = dialRaw(t, e.addr, 4)
			}
			runtime.GC()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			rc.write(append(tc.header, bytes.Repeat([]byte{0}, 64)...))
			rc.closed()
			runtime.ReadMemStats(&after)
			if d := after.TotalAlloc - before.TotalAlloc; d > claimed/16 {
				t.Fatalf("allocated %d bytes while refusing a %d-byte packet", d, claimed)
			}
			if err := other.ping(); err != nil {
				t.Fatalf("other client lost: %v", err)
			}
		})
	}
}

// TestConnackProperties: MQTT 5 clients are told the limits (MQTT 5
// §3.2.2.3): maximum packet size, receive maximum, no shared subscriptions.
func TestConnackProperties(t *testing.T) {
	e := newEnv(t, Config{MaxPacketSize: 4096, ReceiveMaximum: 10}, nil)
	rc := dialRaw(t, e.addr, 5)
	rc.write(connectPacket(5, connectOpts{ClientID: "dev-a", User: strp("dev-a"), Pass: strp(e.tokens["dev-a"]), KeepAlive: 60}))
	p := rc.read()
	if p.typ != pConnack || p.body[1] != 0 {
		t.Fatalf("CONNACK %x", p.body)
	}
	ps, _, err := parseProps(p.body[2:])
	if err != nil {
		t.Fatal(err)
	}
	if v := ps[propMaxPkt]; len(v) != 4 || binary.BigEndian.Uint32(v) != 4096 {
		t.Errorf("maximum packet size property %x, want 4096", v)
	}
	if v := ps[0x21]; len(v) != 2 || binary.BigEndian.Uint16(v) != 10 {
		t.Errorf("receive maximum property %x, want 10", v)
	}
	if v := ps[0x2A]; len(v) != 1 || v[0] != 0 {
		t.Errorf("shared subscription available %x, want 0", v)
	}
	if _, ok := ps[0x22]; ok {
		t.Errorf("topic alias maximum announced: %x", ps[0x22])
	}
}

// TestMaxClients: past MaxClients a CONNECT is refused (3.1.1: 3 server
// unavailable, MQTT 5: 0x89 server busy); a reconnect of a connected
// device is still possible after others leave.
func TestMaxClients(t *testing.T) {
	e := newEnv(t, Config{MaxClients: 1}, nil)
	first := e.rawDevice("dev-a", 4)
	for v, want := range map[byte]byte{4: 3, 5: 0x89} {
		rc := dialRaw(t, e.addr, v)
		if code := rc.connect(connectOpts{ClientID: "dev-b", User: strp("dev-b"), Pass: strp(e.tokens["dev-b"])}); code != want {
			t.Fatalf("v%d: CONNACK %#x, want %#x", v, code, want)
		}
		rc.closed()
	}
	if got := e.counter(e.b.m.closed.WithLabelValues("max_clients")); got != 2 {
		t.Fatalf("max_clients closes %v", got)
	}
	first.write([]byte{pDisconnect << 4, 0})
	first.closed()
	eventually(t, "slot free", func() bool { return atomic.LoadInt64(&e.b.srv.Info.ClientsConnected) == 0 })
	if err := e.rawDevice("dev-b", 4).ping(); err != nil {
		t.Fatal(err)
	}
}
