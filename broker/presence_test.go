package broker

import (
	"context"
	"encoding/binary"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fieldhub/fieldhub/registry"
)

// TestObserverDelivered: Delivered fires only after the device's PUBACK
// of a QoS 1 hub publish, is not confused by the device's own QoS 1
// publishes with the same packet id, and not fired for QoS 0.
func TestObserverDelivered(t *testing.T) {
	ev := &events{}
	e := newEnv(t, Config{}, func(b *Broker) { b.AddObserver(ev) })
	rc := e.rawDevice("dev-a", 5)
	eventually(t, "DeviceConnected", func() bool { return slices.Contains(ev.with("connected"), "connected dev-a 5") })
	if codes := rc.subscribe(1, "devices/dev-a/commands/#"); codes[0] != 1 {
		t.Fatalf("SUBACK %x", codes)
	}
	if got := ev.with("subscribed"); !slices.Equal(got, []string{"subscribed dev-a devices/dev-a/commands/#"}) {
		t.Fatalf("subscribed events %q", got)
	}

	if err := e.b.Publish("devices/dev-a/commands/reboot", []byte("r1"), PublishOptions{QoS: 1}); err != nil {
		t.Fatal(err)
	}
	p := rc.parsePublish(rc.read())
	if p.qos != 1 || string(p.payload) != "r1" {
		t.Fatalf("got %+v", p)
	}
	// The device publishes telemetry with the same packet id; the broker's
	// PUBACK for it must not count as delivery of the command.
	rc.write(publishPacket(5, "devices/dev-a/telemetry", []byte("t"), 1, p.id, false))
	if id, code := pubackOf(t, rc.read()); id != p.id || code != 0 {
		t.Fatalf("PUBACK %d %#x", id, code)
	}
	if got := ev.with("delivered"); len(got) != 0 {
		t.Fatalf("Delivered before the device's PUBACK: %q", got)
	}
	rc.write([]byte{pPuback << 4, 2, byte(p.id >> 8), byte(p.id)})
	eventually(t, "Delivered", func() bool { return len(ev.with("delivered")) == 1 })
	if got := ev.with("delivered")[0]; got != "delivered dev-a devices/dev-a/commands/reboot r1" {
		t.Fatalf("Delivered(%s)", got)
	}

	// QoS 0: nothing to acknowledge, no Delivered.
	if err := e.b.Publish("devices/dev-a/commands/ping", []byte("r0"), PublishOptions{QoS: 0}); err != nil {
		t.Fatal(err)
	}
	if p := rc.parsePublish(rc.read()); p.qos != 0 {
		t.Fatalf("got %+v", p)
	}
	// A duplicate PUBACK does not fire twice.
	rc.write([]byte{pPuback << 4, 2, byte(p.id >> 8), byte(p.id)})
	if err := rc.ping(); err != nil {
		t.Fatal(err)
	}
	if got := ev.with("delivered"); len(got) != 1 {
		t.Fatalf("delivered events %q", got)
	}
	// A refused command (PUBACK reason >= 0x80) is no delivery.
	if err := e.b.Publish("devices/dev-a/commands/bad", []byte("r2"), PublishOptions{QoS: 1}); err != nil {
		t.Fatal(err)
	}
	p = rc.parsePublish(rc.read())
	ack := []byte{pPuback << 4, 3, 0, 0, 0x80}
	binary.BigEndian.PutUint16(ack[2:], p.id)
	rc.write(ack)
	if err := rc.ping(); err != nil {
		t.Fatal(err)
	}
	if got := ev.with("delivered"); len(got) != 1 {
		t.Fatalf("delivered events %q", got)
	}

	rc.write([]byte{pDisconnect << 4, 0})
	eventually(t, "DeviceDisconnected", func() bool { return len(ev.with("disconnected")) == 1 })
}

func device(t *testing.T, reg *registry.Registry, id string) registry.Device {
	t.Helper()
	d, err := reg.Device(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestPresence: connect and disconnect (clean, abrupt, keepalive expiry)
// reach the registry; last_seen moves forward while a device talks; a
// session takeover leaves the device online.
func TestPresence(t *testing.T) {
	var e *env
	e = newEnv(t, Config{}, func(b *Broker) { b.pres.every = 50 * time.Millisecond })
	reg := e.reg
	if device(t, reg, "dev-a").Online {
		t.Fatal("online before connecting")
	}
	rc := e.rawDevice("dev-a", 4)
	eventually(t, "online", func() bool { return device(t, reg, "dev-a").Online })
	if !e.b.Connected("dev-a") || e.counter(e.b.m.connected) != 1 {
		t.Fatal("Connected/gauge after connect")
	}
	first := device(t, reg, "dev-a").LastSeen
	time.Sleep(20 * time.Millisecond)
	if err := rc.ping(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "last_seen moved forward", func() bool { return device(t, reg, "dev-a").LastSeen.After(first) })

	rc.write([]byte{pDisconnect << 4, 0})
	eventually(t, "offline after DISCONNECT", func() bool { return !device(t, reg, "dev-a").Online })
	if e.b.Connected("dev-a") {
		t.Fatal("Connected after DISCONNECT")
	}

	// Abrupt close.
	rc = e.rawDevice("dev-a", 5)
	eventually(t, "online again", func() bool { return device(t, reg, "dev-a").Online })
	rc.c.Close()
	eventually(t, "offline after close", func() bool { return !device(t, reg, "dev-a").Online })

	// Keepalive expiry: 1 s keepalive, mochi allows 1.5 s of silence.
	ka := dialRaw(t, e.addr, 4)
	if code := ka.connect(connectOpts{ClientID: "dev-b", User: strp("dev-b"), Pass: strp(e.tokens["dev-b"]), KeepAlive: 1}); code != 0 {
		t.Fatalf("connect: %#x", code)
	}
	eventually(t, "dev-b online", func() bool { return device(t, reg, "dev-b").Online })
	ka.closed()
	eventually(t, "dev-b offline after keepalive expiry", func() bool { return !device(t, reg, "dev-b").Online })
	eventually(t, "keepalive_timeout counted", func() bool {
		return e.counter(e.b.m.closed.WithLabelValues("keepalive_timeout")) == 1
	})

	// Takeover: a second connection with the same id replaces the first;
	// the device stays online.
	old := e.rawDevice("dev-c", 5)
	eventually(t, "dev-c online", func() bool { return device(t, reg, "dev-c").Online })
	cur := e.rawDevice("dev-c", 5)
	got := old.closed() // DISCONNECT 0x8E session taken over
	if len(got) != 1 || got[0].typ != pDisconnect || got[0].body[0] != 0x8E {
		t.Fatalf("old session got %+v", got)
	}
	if err := cur.ping(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // let a wrong "offline" reach the registry, if one were sent
	if !device(t, reg, "dev-c").Online || !e.b.Connected("dev-c") {
		t.Fatal("dev-c offline after a session takeover")
	}
	if g := e.counter(e.b.m.connected); g != 1 {
		t.Fatalf("clients_connected = %v, want 1", g)
	}
}

// TestStopMarksOffline: Stop disconnects clients, and when it returns the
// registry shows them offline.
func TestStopMarksOffline(t *testing.T) {
	reg, tokens := newRegistry(t, "dev-a", "dev-b")
	b, err := New(Config{Addr: "127.0.0.1:0", WSAddr: "127.0.0.1:0"}, Deps{Auth: reg, Presence: reg, Logger: testLogger(t), Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, b: b, reg: reg, tokens: tokens, addr: b.Addrs().TCP}
	v5 := e.rawDevice("dev-a", 5)
	e.rawDevice("dev-b", 4)
	idle := dialRaw(t, e.addr, 4) // never sends CONNECT: Stop must not wait for its deadline
	_ = idle
	eventually(t, "both online", func() bool { return device(t, reg, "dev-a").Online && device(t, reg, "dev-b").Online })

	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if err := b.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"dev-a", "dev-b"} {
		if device(t, reg, id).Online {
			t.Errorf("%s online after Stop", id)
		}
	}
	got := v5.closed()
	if len(got) != 1 || got[0].typ != pDisconnect || got[0].body[0] != 0x8B {
		t.Errorf("MQTT 5 client got %+v, want DISCONNECT 0x8B server shutting down", got)
	}
	if err := b.Publish("devices/dev-a/commands/x", nil, PublishOptions{}); err == nil {
		t.Error("Publish after Stop succeeded")
	}
	if err := b.Stop(ctx); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

// TestDeliveredAfterReconnect: a QoS 1 command published while a device
// with a persistent session is away is delivered when it comes back, and
// Delivered fires on that PUBACK.
func TestDeliveredAfterReconnect(t *testing.T) {
	ev := &events{}
	e := newEnv(t, Config{}, func(b *Broker) { b.AddObserver(ev) })
	opts := connectOpts{ClientID: "dev-a", User: strp("dev-a"), Pass: strp(e.tokens["dev-a"]), NoCleanSession: true}
	rc := dialRaw(t, e.addr, 4)
	if code := rc.connect(opts); code != 0 {
		t.Fatalf("connect %#x", code)
	}
	if codes := rc.subscribe(1, "devices/dev-a/commands/#"); codes[0] != 1 {
		t.Fatalf("SUBACK %x", codes)
	}
	rc.c.Close()
	eventually(t, "offline", func() bool { return !e.b.Connected("dev-a") })
	if err := e.b.Publish("devices/dev-a/commands/reboot", []byte("while away"), PublishOptions{QoS: 1}); err != nil {
		t.Fatal(err)
	}
	rc = dialRaw(t, e.addr, 4)
	rc.write(connectPacket(4, opts))
	p := rc.read()
	if p.typ != pConnack || p.body[0] != 1 || p.body[1] != 0 {
		t.Fatalf("CONNACK %x, want session present", p.body)
	}
	pub := rc.parsePublish(rc.read())
	if string(pub.payload) != "while away" || pub.qos != 1 {
		t.Fatalf("got %+v", pub)
	}
	if got := ev.with("delivered"); len(got) != 0 {
		t.Fatalf("Delivered before PUBACK: %q", got)
	}
	rc.write([]byte{pPuback << 4, 2, byte(pub.id >> 8), byte(pub.id)})
	eventually(t, "Delivered", func() bool {
		return slices.Equal(ev.with("delivered"), []string{"delivered dev-a devices/dev-a/commands/reboot while away"})
	})
}

// TestStopWhileClientsChurn: Stop completes while devices keep connecting
// and leaving on two listeners (mochi's own listener shutdown could
// deadlock here; see tcpListener.Close).
func TestStopWhileClientsChurn(t *testing.T) {
	reg, tokens := newRegistry(t, "dev-a", "dev-b", "dev-c")
	b, err := New(Config{Addr: "127.0.0.1:0", TLS: TLSConfig{}, WSAddr: "127.0.0.1:0"}, Deps{Auth: reg, Presence: reg, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	addr := b.Addrs().TCP
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, id := range []string{"dev-a", "dev-b", "dev-c"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				c, err := net.DialTimeout("tcp", addr, time.Second)
				if err != nil {
					continue // listener closed
				}
				_ = c.SetDeadline(time.Now().Add(2 * time.Second))
				c.Write(connectPacket(4, connectOpts{ClientID: id, User: strp(id), Pass: strp(tokens[id]), KeepAlive: 60}))
				c.Read(make([]byte, 4))
				c.Close()
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	err = b.Stop(ctx)
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatalf("Stop: %v", err)
	}
}
