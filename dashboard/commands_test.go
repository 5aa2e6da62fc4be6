package dashboard

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fieldhub/fieldhub/broker"
	"github.com/fieldhub/fieldhub/command"
	"github.com/fieldhub/fieldhub/registry"
	"github.com/fieldhub/fieldhub/telemetry"
)

// cmdPub adapts the broker to command.Publisher (as hub.BrokerPublisher).
type cmdPub struct{ b *broker.Broker }

func (p cmdPub) Publish(topic string, payload []byte, o command.PublishOptions) error {
	return p.b.Publish(topic, payload, broker.PublishOptions{QoS: 1, Retain: o.Retain, ResponseTopic: o.ResponseTopic,
		CorrelationData: o.CorrelationData, MessageExpiry: o.MessageExpiry, ContentType: o.ContentType})
}
func (p cmdPub) Connected(id string) bool { return p.b.Connected(id) }

type cmdAPI struct {
	t     *testing.T
	srv   *httptest.Server
	token string
	reg   *registry.Registry
	mqtt  string
	devTk string
}

// newCmdAPI serves the API over a real registry, broker and command
// service, with one device "api-dev".
func newCmdAPI(t *testing.T) *cmdAPI {
	t.Helper()
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	reg, err := registry.Open(ctx, filepath.Join(t.TempDir(), "registry.db"), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	_, devTk, err := reg.CreateDevice(ctx, registry.DeviceSpec{ID: "api-dev"})
	if err != nil {
		t.Fatal(err)
	}
	_, token, err := reg.CreateAPIToken(ctx, "test")
	if err != nil {
		t.Fatal(err)
	}
	prom := prometheus.NewRegistry()
	b, err := broker.New(broker.Config{Addr: "127.0.0.1:0"}, broker.Deps{Auth: reg, Registerer: prom})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := command.New(command.Options{Ledger: reg, Publisher: cmdPub{b}, DefaultTimeout: time.Minute, MaxTimeout: time.Hour, Registerer: prom})
	if err != nil {
		t.Fatal(err)
	}
	b.Handle(telemetry.TopicReply, func(ctx context.Context, m broker.Message) error {
		return svc.HandleReply(ctx, command.Incoming{Device: m.Device, Topic: m.TopicName, Payload: m.Payload})
	})
	b.Handle(telemetry.TopicTwinReported, func(ctx context.Context, m broker.Message) error {
		return svc.HandleReported(ctx, command.Incoming{Device: m.Device, Topic: m.TopicName, Payload: m.Payload})
	})
	b.AddObserver(svc)
	if err := svc.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(New(Deps{Registry: reg, Commands: svc, Metrics: prom}))
	t.Cleanup(func() {
		srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		b.Stop(ctx)
		svc.Stop(ctx)
	})
	return &cmdAPI{t: t, srv: srv, token: token, reg: reg, mqtt: b.Addrs().TCP, devTk: devTk}
}

// call sends a request and decodes the JSON answer into out; it returns
// the status and the raw body.
func (a *cmdAPI) call(method, path, body string, out any) (int, string) {
	a.t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, a.srv.URL+path, r)
	req.Header.Set("Authorization", "Bearer "+a.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(b, out); err != nil {
			a.t.Fatalf("%s %s: %v: %s", method, path, err, b)
		}
	}
	return resp.StatusCode, string(b)
}

// TestCommandAPI drives every command and twin route against a paho
// device: send (201, then 200 for the same idempotency key), list, show
// with history, wait (timeout and final), cancel (409 when final), the
// twin, and the error statuses.
func TestCommandAPI(t *testing.T) {
	a := newCmdAPI(t)

	var c CommandView
	if st, body := a.call("POST", "/api/v1/devices/api-dev/commands", `{"name": "reboot", "params": {"delay": 1}, "timeout": "10m", "idempotency_key": "k1"}`, &c); st != 201 {
		t.Fatalf("send: %d %s", st, body)
	}
	if c.State != registry.CommandQueued || c.Final || c.ExpiresAt.Sub(c.CreatedAt) != 10*time.Minute {
		t.Fatalf("sent: %+v", c)
	}
	var again CommandView
	if st, _ := a.call("POST", "/api/v1/devices/api-dev/commands", `{"name": "reboot", "idempotency_key": "k1"}`, &again); st != 200 || again.ID != c.ID {
		t.Fatalf("same key: %d %s", st, again.ID)
	}

	// wait with a short timeout answers with the current, non-final state.
	var w CommandView
	if st, body := a.call("GET", "/api/v1/commands/"+c.ID+"/wait?timeout=50ms", "", &w); st != 200 || w.Final || w.State != registry.CommandQueued {
		t.Fatalf("wait timeout: %d %s", st, body)
	}

	// A device answers; a long poll started before returns the result.
	done := make(chan CommandView, 1)
	go func() {
		var v CommandView
		a.call("GET", "/api/v1/commands/"+c.ID+"/wait?timeout=30s", "", &v)
		done <- v
	}()
	o := mqtt.NewClientOptions().AddBroker("tcp://" + a.mqtt).SetClientID("api-dev").SetUsername("api-dev").SetPassword(a.devTk).SetAutoReconnect(false)
	dev := mqtt.NewClient(o)
	if tk := dev.Connect(); !tk.WaitTimeout(20*time.Second) || tk.Error() != nil {
		t.Fatalf("connect: %v", tk.Error())
	}
	defer dev.Disconnect(50)
	dev.Subscribe("devices/api-dev/commands/#", 1, func(cl mqtt.Client, m mqtt.Message) {
		var cm command.Message
		json.Unmarshal(m.Payload(), &cm)
		cl.Publish(telemetry.ReplyTopic("api-dev", cm.ID), 1, false, `{"status": "ok", "result": {"rebooted": true}}`)
	}).WaitTimeout(20 * time.Second)
	select {
	case v := <-done:
		if !v.Final || v.State != registry.CommandSucceeded || !bytes.Contains(v.Result, []byte(`"rebooted"`)) {
			t.Fatalf("long poll: %+v", v)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("long poll did not return")
	}

	var show CommandView
	if st, body := a.call("GET", "/api/v1/commands/"+c.ID, "", &show); st != 200 || len(show.History) < 3 || show.History[0].To != registry.CommandQueued {
		t.Fatalf("show: %d %s", st, body)
	}
	if st, body := a.call("POST", "/api/v1/commands/"+c.ID+"/cancel", "", nil); st != 409 || !strings.Contains(body, `"final"`) {
		t.Fatalf("cancel a final command: %d %s", st, body)
	}
	var list []CommandView
	if st, _ := a.call("GET", "/api/v1/devices/api-dev/commands?limit=10", "", &list); st != 200 || len(list) != 1 || list[0].ID != c.ID {
		t.Fatalf("list: %d %+v", st, list)
	}

	for _, tc := range []struct {
		method, path, body string
		status             int
	}{
		{"POST", "/api/v1/devices/api-dev/commands", `{"name": "a/b"}`, 400},
		{"POST", "/api/v1/devices/api-dev/commands", `{"name": "x", "params": [1]}`, 400},
		{"POST", "/api/v1/devices/api-dev/commands", `{"name": "x", "timeout": "2h"}`, 400},
		{"POST", "/api/v1/devices/api-dev/commands", `{"name": "x", "timeout": "soon"}`, 400},
		{"POST", "/api/v1/devices/api-dev/commands", `not json`, 400},
		{"POST", "/api/v1/devices/ghost/commands", `{"name": "x"}`, 404},
		{"GET", "/api/v1/devices/ghost/commands", ``, 404},
		{"GET", "/api/v1/commands/nope", ``, 404},
		{"POST", "/api/v1/commands/nope/cancel", ``, 404},
		{"GET", "/api/v1/commands/nope/wait?timeout=1s", ``, 404},
		{"GET", "/api/v1/commands/" + c.ID + "/wait?timeout=1h", ``, 400},
		{"GET", "/api/v1/devices/api-dev/commands?limit=0", ``, 400},
		{"GET", "/api/v1/devices/ghost/twin", ``, 404},
		{"PUT", "/api/v1/devices/api-dev/twin/desired", `[1]`, 400},
		{"PUT", "/api/v1/devices/ghost/twin/desired", `{}`, 404},
	} {
		if st, body := a.call(tc.method, tc.path, tc.body, nil); st != tc.status || !strings.Contains(body, `"error"`) {
			t.Errorf("%s %s %s: %d %s, want %d", tc.method, tc.path, tc.body, st, body, tc.status)
		}
	}

	// Cancel a pending one (the device is gone, so nobody answers it).
	dev.Disconnect(50)
	var p CommandView
	a.call("POST", "/api/v1/devices/api-dev/commands", `{"name": "later", "timeout": "1h"}`, &p)
	var cancelled CommandView
	if st, body := a.call("POST", "/api/v1/commands/"+p.ID+"/cancel", "", &cancelled); st != 200 || cancelled.State != registry.CommandCancelled || !cancelled.Final {
		t.Fatalf("cancel: %d %s", st, body)
	}

	// Twin.
	var td registry.TwinDoc
	if st, body := a.call("PUT", "/api/v1/devices/api-dev/twin/desired", `{"interval": 15}`, &td); st != 200 || td.Version != 1 {
		t.Fatalf("set desired: %d %s", st, body)
	}
	var tw command.TwinView
	if st, body := a.call("GET", "/api/v1/devices/api-dev/twin", "", &tw); st != 200 || tw.Desired.Version != 1 || string(tw.Delta["interval"]) != "15" {
		t.Fatalf("twin: %d %s", st, body)
	}

	// No token: 401.
	resp, err := http.Get(a.srv.URL + "/api/v1/commands/" + c.ID)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Fatalf("without a token: %d", resp.StatusCode)
	}
}
