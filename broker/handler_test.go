package broker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldhub/fieldhub/telemetry"
)

func pahoClient(t *testing.T, url, id, token string) (paho.Client, error) {
	t.Helper()
	opts := paho.NewClientOptions().AddBroker(url).SetClientID(id).SetUsername(id).SetPassword(token).
		SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(waitFor).SetProtocolVersion(4)
	c := paho.NewClient(opts)
	tk := c.Connect()
	if !tk.WaitTimeout(waitFor) {
		return nil, errors.New("paho connect timed out")
	}
	if err := tk.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c, nil
}

// TestHandlerRejected: a handler's ErrRejected becomes PUBACK 0x99 for
// MQTT 5 and a normal PUBACK for 3.1.1; the client stays connected.
func TestHandlerRejected(t *testing.T) {
	rec := &recorder{verdict: func(m Message) error {
		if strings.HasPrefix(string(m.Payload), "bad") {
			return fmt.Errorf("decode: %w", ErrRejected)
		}
		return nil
	}}
	e := newEnv(t, Config{}, handleAll(rec))

	v5 := e.rawDevice("dev-a", 5)
	v5.write(publishPacket(5, "devices/dev-a/telemetry", []byte("bad json"), 1, 10, false))
	if id, code := pubackOf(t, v5.read()); id != 10 || code != 0x99 {
		t.Fatalf("MQTT 5 rejected publish: PUBACK id %d code %#x, want 0x99", id, code)
	}
	v5.write(publishPacket(5, "devices/dev-a/telemetry", []byte("good"), 1, 11, false))
	if id, code := pubackOf(t, v5.read()); id != 11 || code != 0 {
		t.Fatalf("MQTT 5 good publish: PUBACK id %d code %#x", id, code)
	}

	v3 := e.rawDevice("dev-b", 4)
	v3.write(publishPacket(4, "devices/dev-b/telemetry", []byte("bad json"), 1, 12, false))
	p := v3.read()
	if id, code := pubackOf(t, p); id != 12 || code != 0 || len(p.body) != 2 {
		t.Fatalf("3.1.1 rejected publish: PUBACK %x, want a plain PUBACK", p.body)
	}
	if err := v3.ping(); err != nil {
		t.Fatal(err)
	}

	// paho (3.1.1) completes its publish; mosquitto_pub -V 5 reports 0x99.
	c, err := pahoClient(t, "tcp://"+e.addr, "dev-c", e.tokens["dev-c"])
	if err != nil {
		t.Fatal(err)
	}
	if tk := c.Publish("devices/dev-c/replies/cmd-1", 1, false, "bad reply"); !tk.WaitTimeout(waitFor) || tk.Error() != nil {
		t.Fatalf("paho publish: %v", tk.Error())
	}
	host, port := hostPort(t, e.addr)
	_, stderr, err := runTool(t, "mosquitto_pub", "-h", host, "-p", port, "-V", "mqttv5", "-q", "1", "-i", "dev-c", "-u", "dev-c",
		"-P", e.tokens["dev-c"], "-t", "devices/dev-c/twin/reported", "-m", "bad twin")
	t.Logf("mosquitto_pub -V 5 on a rejected message: %v: %s", err, strings.TrimSpace(stderr))
	if !strings.Contains(strings.ToLower(stderr), "payload format invalid") {
		t.Fatalf("mosquitto_pub stderr %q does not report the 0x99 reason", stderr)
	}
	if n := len(rec.all()); n != 5 {
		t.Fatalf("handler saw %d messages, want 5", n)
	}
}

// TestHandlerError: any other handler error withholds the PUBACK and
// disconnects the QoS>0 publisher (MQTT 5: DISCONNECT 0x88), which
// resends after reconnecting; QoS 0 messages are dropped and counted.
func TestHandlerError(t *testing.T) {
	storeDown := errors.New("store down")
	rec := &recorder{verdict: func(Message) error { return storeDown }}
	e := newEnv(t, Config{}, handleAll(rec))

	v5 := e.rawDevice("dev-a", 5)
	v5.write(publishPacket(5, "devices/dev-a/telemetry", []byte("m1"), 1, 1, false))
	got := v5.closed()
	if len(got) != 1 || got[0].typ != pDisconnect || len(got[0].body) < 1 || got[0].body[0] != 0x88 {
		t.Fatalf("MQTT 5 client got %+v, want only DISCONNECT 0x88", got)
	}

	v3 := e.rawDevice("dev-b", 4)
	v3.write(publishPacket(4, "devices/dev-b/telemetry", []byte("m2"), 1, 1, false))
	if got := v3.closed(); len(got) != 0 {
		t.Fatalf("3.1.1 client got %+v, want the connection closed without a PUBACK", got)
	}

	before := e.counter(e.b.m.dropped.WithLabelValues("handler_error"))
	q0 := e.rawDevice("dev-c", 4)
	q0.write(publishPacket(4, "devices/dev-c/telemetry", []byte("m3"), 0, 0, false))
	if err := q0.ping(); err != nil {
		t.Fatalf("QoS 0 publisher disconnected: %v", err)
	}
	if d := e.counter(e.b.m.dropped.WithLabelValues("handler_error")) - before; d != 1 {
		t.Fatalf("dropped{handler_error} rose by %v", d)
	}
	eventually(t, "handler_error closes counted", func() bool {
		return e.counter(e.b.m.closed.WithLabelValues("handler_error")) == 2
	})

	// The store is back: the device reconnects and resends (DUP).
	rec.setVerdict(nil)
	again := e.rawDevice("dev-a", 5)
	pk := publishPacket(5, "devices/dev-a/telemetry", []byte("m1"), 1, 1, false)
	pk[0] |= 0x08 // DUP
	again.write(pk)
	if id, code := pubackOf(t, again.read()); id != 1 || code != 0 {
		t.Fatalf("resend: PUBACK id %d code %#x", id, code)
	}
}

// TestHandlerBlocksPuback: the PUBACK waits for the handler (QoS 1 means
// stored), and the client's other traffic waits behind it.
func TestHandlerBlocksPuback(t *testing.T) {
	release := make(chan struct{})
	rec := &recorder{verdict: func(Message) error { <-release; return nil }}
	e := newEnv(t, Config{}, handleAll(rec))
	rc := e.rawDevice("dev-a", 4)
	rc.write(publishPacket(4, "devices/dev-a/telemetry", []byte("slow"), 1, 5, false))
	eventually(t, "handler entered", func() bool { return len(rec.all()) == 1 })
	rc.noPacket(200 * time.Millisecond) // no PUBACK while the handler holds the message
	close(release)
	if id, code := pubackOf(t, rc.read()); id != 5 || code != 0 {
		t.Fatalf("PUBACK id %d code %#x", id, code)
	}
}

// TestStopCancelsBlockedHandler: when Stop's context ends while a handler
// still holds a message, the handler's context is cancelled and Stop
// returns (reporting the timeout) instead of hanging.
func TestStopCancelsBlockedHandler(t *testing.T) {
	reg, tokens := newRegistry(t, "dev-a")
	entered := make(chan struct{})
	b, err := New(Config{Addr: "127.0.0.1:0"}, Deps{Auth: reg, Presence: reg, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	b.Handle(telemetry.TopicTelemetry, func(ctx context.Context, m Message) error {
		close(entered)
		<-ctx.Done()
		return ctx.Err()
	})
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, b: b, reg: reg, tokens: tokens, addr: b.Addrs().TCP}
	rc := e.rawDevice("dev-a", 4)
	rc.write(publishPacket(4, "devices/dev-a/telemetry", []byte("x"), 1, 1, false))
	<-entered
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := b.Stop(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Stop: %v, want the deadline reported", err)
	}
	if got := rc.closed(); len(got) != 0 {
		t.Fatalf("client got %+v, want no PUBACK", got)
	}
	if device(t, reg, "dev-a").Online {
		t.Fatal("online after Stop")
	}
}
