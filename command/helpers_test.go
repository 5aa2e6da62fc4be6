package command

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fieldhub/fieldhub/broker"
	"github.com/fieldhub/fieldhub/internal/testkit"
	"github.com/fieldhub/fieldhub/registry"
	"github.com/fieldhub/fieldhub/telemetry"
)

// The tests run the real parts: a registry in a SQLite file, the embedded
// broker on 127.0.0.1:0, paho (MQTT 3.1.1) devices and mosquitto's
// clients for MQTT 5.

const waitFor = 30 * time.Second // generous bound for "eventually"

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// brokerPub adapts the broker to Publisher, as hub.BrokerPublisher does.
type brokerPub struct{ b *broker.Broker }

func (p brokerPub) Publish(topic string, payload []byte, o PublishOptions) error {
	return p.b.Publish(topic, payload, broker.PublishOptions{QoS: 1, Retain: o.Retain, ResponseTopic: o.ResponseTopic,
		CorrelationData: o.CorrelationData, MessageExpiry: o.MessageExpiry, ContentType: o.ContentType})
}
func (p brokerPub) Connected(id string) bool { return p.b.Connected(id) }

// env is a registry that outlives restarts of a broker + service pair.
type env struct {
	t      *testing.T
	reg    *registry.Registry
	tokens map[string]string
	b      *broker.Broker
	svc    *Service
	prom   *prometheus.Registry
	addr   string
	opts   func(*Options)
}

func newEnv(t *testing.T, devices ...string) *env {
	t.Helper()
	ctx := context.Background()
	reg, err := registry.Open(ctx, filepath.Join(t.TempDir(), "registry.db"), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	e := &env{t: t, reg: reg, tokens: map[string]string{}}
	for _, id := range devices {
		e.addDevice(id)
	}
	e.start()
	return e
}

func (e *env) addDevice(id string) {
	e.t.Helper()
	_, tok, err := e.reg.CreateDevice(context.Background(), registry.DeviceSpec{ID: id})
	if err != nil {
		e.t.Fatal(err)
	}
	e.tokens[id] = tok
}

// start runs a new broker and service on the registry, wired like the hub.
func (e *env) start() {
	t := e.t
	t.Helper()
	ctx := context.Background()
	e.prom = prometheus.NewRegistry()
	b, err := broker.New(broker.Config{Addr: "127.0.0.1:0"}, broker.Deps{Auth: e.reg, Presence: e.reg, Logger: testLogger(t), Registerer: e.prom})
	if err != nil {
		t.Fatal(err)
	}
	o := Options{Ledger: e.reg, Publisher: brokerPub{b}, DefaultTimeout: time.Minute, MaxTimeout: 24 * time.Hour,
		Logger: testLogger(t), Registerer: e.prom}
	if e.opts != nil {
		e.opts(&o)
	}
	svc, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	b.Handle(telemetry.TopicReply, func(ctx context.Context, m broker.Message) error {
		return svc.HandleReply(ctx, Incoming{Device: m.Device, Topic: m.TopicName, Payload: m.Payload, CorrelationData: m.CorrelationData})
	})
	b.Handle(telemetry.TopicTwinReported, func(ctx context.Context, m broker.Message) error {
		err := svc.HandleReported(ctx, Incoming{Device: m.Device, Topic: m.TopicName, Payload: m.Payload})
		if errors.Is(err, ErrRejected) {
			return fmt.Errorf("%w: %w", broker.ErrRejected, err)
		}
		return err
	})
	b.AddObserver(svc)
	if err := svc.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	e.b, e.svc, e.addr = b, svc, b.Addrs().TCP
	t.Cleanup(e.stop)
}

// stop stops the broker, then the service (as the hub does); idempotent.
func (e *env) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if err := e.b.Stop(ctx); err != nil {
		e.t.Errorf("stop broker: %v", err)
	}
	if err := e.svc.Stop(ctx); err != nil {
		e.t.Errorf("stop service: %v", err)
	}
}

func (e *env) send(req SendRequest) registry.Command {
	e.t.Helper()
	c, _, err := e.svc.Send(context.Background(), req)
	if err != nil {
		e.t.Fatalf("send %+v: %v", req, err)
	}
	return c
}

// waitState polls the ledger until the command is in state want.
func (e *env) waitState(id string, want registry.CommandState) registry.Command {
	e.t.Helper()
	var c registry.Command
	testkit.Eventually(e.t, waitFor, func() bool {
		var err error
		c, err = e.reg.Command(context.Background(), id)
		return err == nil && c.State == want
	}, fmt.Sprintf("command %s to be %s (is %s)", id, want, c.State))
	return c
}

func (e *env) wait(id string) registry.Command {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	c, err := e.svc.Wait(ctx, id)
	if err != nil {
		e.t.Fatalf("wait %s: %v (state %s)", id, err, c.State)
	}
	return c
}

// device is a paho (MQTT 3.1.1) device that records the commands and
// desired twins it receives and may answer commands.
type device struct {
	t       testing.TB
	id      string
	c       mqtt.Client
	cmds    chan Message
	desired chan DesiredMessage
	mu      sync.Mutex
	reply   func(Message) *Reply
}

// connect connects a device and subscribes it to its commands and desired
// twin. reply, if not nil, answers each command (nil answer: no reply).
func (e *env) connect(id string, reply func(Message) *Reply) *device {
	e.t.Helper()
	return connectDevice(e.t, e.addr, id, e.tokens[id], reply)
}

func connectDevice(t testing.TB, addr, id, token string, reply func(Message) *Reply) *device {
	t.Helper()
	d := &device{t: t, id: id, cmds: make(chan Message, 10000), desired: make(chan DesiredMessage, 100), reply: reply}
	d.c = connectBare(t, addr, id, token)
	waitToken(t, d.c.Subscribe(telemetry.TwinDesiredTopic(id), 1, func(_ mqtt.Client, m mqtt.Message) {
		var dm DesiredMessage
		if err := json.Unmarshal(m.Payload(), &dm); err != nil {
			t.Errorf("%s: desired twin %q: %v", id, m.Payload(), err)
			return
		}
		d.desired <- dm
	}), "subscribe twin")
	waitToken(t, d.c.Subscribe("devices/"+id+"/commands/#", 1, func(_ mqtt.Client, m mqtt.Message) {
		var cm Message
		if err := json.Unmarshal(m.Payload(), &cm); err != nil {
			t.Errorf("%s: command %q: %v", id, m.Payload(), err)
			return
		}
		if want := telemetry.CommandTopic(id, cm.Name); m.Topic() != want {
			t.Errorf("%s: command %s on topic %s, want %s", id, cm.ID, m.Topic(), want)
		}
		d.cmds <- cm
		d.mu.Lock()
		fn := d.reply
		d.mu.Unlock()
		if fn != nil {
			if r := fn(cm); r != nil {
				d.publishReply(cm.ID, *r)
			}
		}
	}), "subscribe commands")
	return d
}

// connectBare connects a paho client (clean session) without subscribing.
func connectBare(t testing.TB, addr, id, token string) mqtt.Client {
	t.Helper()
	o := mqtt.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).SetUsername(id).SetPassword(token).
		SetAutoReconnect(false).SetConnectTimeout(10 * time.Second).SetCleanSession(true)
	c := mqtt.NewClient(o)
	waitToken(t, c.Connect(), "connect "+id)
	t.Cleanup(func() { c.Disconnect(50) })
	return c
}

func (d *device) setReply(fn func(Message) *Reply) {
	d.mu.Lock()
	d.reply = fn
	d.mu.Unlock()
}

// publishReply publishes without waiting: it may run in paho's message
// handler, which must return for paho to go on.
func (d *device) publishReply(id string, r Reply) mqtt.Token {
	b, _ := json.Marshal(r)
	return d.c.Publish(telemetry.ReplyTopic(d.id, id), 1, false, b)
}

// next returns the next command received.
func (d *device) next() Message {
	d.t.Helper()
	select {
	case m := <-d.cmds:
		return m
	case <-time.After(waitFor):
		d.t.Fatalf("%s: no command within %s", d.id, waitFor)
	}
	return Message{}
}

// none checks that no further command arrives for a short while.
func (d *device) none(within time.Duration) {
	d.t.Helper()
	select {
	case m := <-d.cmds:
		d.t.Fatalf("%s: unexpected command %s (%s)", d.id, m.ID, m.Name)
	case <-time.After(within):
	}
}

func waitToken(t testing.TB, tk mqtt.Token, what string) {
	t.Helper()
	if !tk.WaitTimeout(waitFor) {
		t.Fatalf("%s: timed out", what)
	}
	if err := tk.Error(); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func okReply(result string) func(Message) *Reply {
	return func(Message) *Reply { return &Reply{Status: "ok", Result: json.RawMessage(result)} }
}

func states(ts []registry.Transition) string {
	var s []string
	for _, t := range ts {
		s = append(s, string(t.To))
	}
	return strings.Join(s, ",")
}
