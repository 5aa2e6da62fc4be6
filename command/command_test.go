package command

import (
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/fieldhub/fieldhub/internal/testkit"
	"github.com/fieldhub/fieldhub/registry"
	"github.com/fieldhub/fieldhub/telemetry"
)

// TestRoundTrip: a paho device receives commands and answers them; the
// ledger records succeeded with the result, failed with the error, and
// expired when no reply comes within the timeout.
func TestRoundTrip(t *testing.T) {
	e := newEnv(t, "rt-1")
	d := e.connect("rt-1", func(m Message) *Reply {
		var p struct{ Mode string }
		json.Unmarshal(m.Params, &p)
		switch p.Mode {
		case "ok":
			return &Reply{Status: "ok", Result: json.RawMessage(`{"echo": ` + string(m.Params) + `}`)}
		case "error":
			return &Reply{Status: "error", Error: "motor jammed"}
		}
		return nil
	})

	t.Run("succeeded", func(t *testing.T) {
		c := e.send(SendRequest{Device: "rt-1", Name: "reboot", Params: json.RawMessage(`{"mode": "ok", "delay": 3}`)})
		got := d.next()
		if got.ID != c.ID || got.Name != "reboot" || !jsonEqual(got.Params, c.Params) ||
			!got.ExpiresAt.Equal(c.ExpiresAt.Truncate(time.Nanosecond)) {
			t.Fatalf("device got %+v for %+v", got, c)
		}
		f := e.wait(c.ID)
		if f.State != registry.CommandSucceeded {
			t.Fatalf("state %s, want succeeded", f.State)
		}
		var res struct{ Echo struct{ Delay int } }
		if err := json.Unmarshal(f.Result, &res); err != nil || res.Echo.Delay != 3 {
			t.Fatalf("result %s (%v)", f.Result, err)
		}
		hist, err := e.svc.History(context.Background(), c.ID)
		if err != nil {
			t.Fatal(err)
		}
		// The PUBACK event may be handled after the reply; both orders are fine.
		if s := states(hist); s != "queued,sent,delivered,succeeded" && s != "queued,sent,succeeded" {
			t.Fatalf("history %s", s)
		}
	})
	t.Run("failed", func(t *testing.T) {
		c := e.send(SendRequest{Device: "rt-1", Name: "move", Params: json.RawMessage(`{"mode": "error"}`)})
		d.next()
		f := e.wait(c.ID)
		if f.State != registry.CommandFailed || f.Error != "motor jammed" {
			t.Fatalf("got %s %q, want failed \"motor jammed\"", f.State, f.Error)
		}
	})
	t.Run("expired", func(t *testing.T) {
		c := e.send(SendRequest{Device: "rt-1", Name: "slow", Timeout: time.Second})
		d.next()
		e.waitState(c.ID, registry.CommandDelivered)
		f := e.wait(c.ID)
		if f.State != registry.CommandExpired {
			t.Fatalf("state %s, want expired", f.State)
		}
		if took := f.UpdatedAt.Sub(f.CreatedAt); took < time.Second {
			t.Fatalf("expired after %s, before its 1s timeout", took)
		}
		// A reply after the expiry is late: counted, not applied.
		waitToken(t, d.publishReply(c.ID, Reply{Status: "ok"}), "late reply")
		testkit.Eventually(t, waitFor, func() bool {
			return testutil.ToFloat64(e.svc.m.repliesIgnored.WithLabelValues("late")) == 1
		}, "the late reply to be counted")
		if c2, _ := e.svc.Get(context.Background(), c.ID); c2.State != registry.CommandExpired {
			t.Fatalf("late reply changed the state to %s", c2.State)
		}
	})
	for state, n := range map[string]float64{"succeeded": 1, "failed": 1, "expired": 1} {
		if got := testutil.ToFloat64(e.svc.m.final.WithLabelValues(state)); got != n {
			t.Errorf("fieldhub_commands_total{state=%q} = %v, want %v", state, got, n)
		}
	}
	if n := testutil.CollectAndCount(e.prom, "fieldhub_command_round_trip_seconds"); n != 1 {
		t.Errorf("round trip histogram not registered (%d)", n)
	}
}

// TestMQTT5Properties: an MQTT 5 subscriber (mosquitto_sub -V 5) sees the
// response topic, correlation data and message expiry; a reply published
// by mosquitto_pub -V 5 to that response topic, with that correlation
// data, completes the command.
func TestMQTT5Properties(t *testing.T) {
	sub := testkit.Binary(t, "mosquitto_sub")
	pub := testkit.Binary(t, "mosquitto_pub")
	e := newEnv(t, "v5-dev")
	c := e.send(SendRequest{Device: "v5-dev", Name: "blink", Params: json.RawMessage(`{"times": 2}`), Timeout: time.Hour})
	if c.State != registry.CommandQueued {
		t.Fatalf("offline device: state %s, want queued", c.State)
	}
	host, port, _ := strings.Cut(e.addr, ":")
	auth := []string{"-h", host, "-p", port, "-i", "v5-dev", "-u", "v5-dev", "-P", e.tokens["v5-dev"], "-V", "5"}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	out, err := exec.CommandContext(ctx, sub, append(auth, "-q", "1", "-C", "1", "-t", "devices/v5-dev/commands/#",
		"-F", "%R\t%D\t%E\t%C\t%t\t%p")...).CombinedOutput()
	if err != nil {
		t.Fatalf("mosquitto_sub: %v\n%s", err, out)
	}
	f := strings.Split(strings.TrimRight(string(out), "\n"), "\t")
	if len(f) != 6 {
		t.Fatalf("mosquitto_sub printed %q", out)
	}
	respTopic, corr, expiry, ctype, topic, payload := f[0], f[1], f[2], f[3], f[4], f[5]
	if respTopic != telemetry.ReplyTopic("v5-dev", c.ID) || corr != c.ID || topic != "devices/v5-dev/commands/blink" || ctype != "application/json" {
		t.Fatalf("properties: response topic %q, correlation %q, content type %q, topic %q; command %s", respTopic, corr, ctype, topic, c.ID)
	}
	if n, err := strconv.Atoi(expiry); err != nil || n < 3000 || n > 3600 {
		t.Fatalf("message expiry %q, want about 3600 s", expiry)
	}
	var m Message
	if err := json.Unmarshal([]byte(payload), &m); err != nil || m.ID != c.ID || !jsonEqual(m.Params, c.Params) || !m.ExpiresAt.Equal(c.ExpiresAt) {
		t.Fatalf("payload %q (%v)", payload, err)
	}
	e.waitState(c.ID, registry.CommandDelivered) // mosquitto_sub acknowledged it

	o, err := exec.CommandContext(ctx, pub, append(auth, "-q", "1", "-t", respTopic, "-D", "publish", "correlation-data", corr,
		"-m", `{"status": "ok", "result": {"blinked": 2}}`)...).CombinedOutput()
	if err != nil {
		t.Fatalf("mosquitto_pub: %v\n%s", err, o)
	}
	done := e.wait(c.ID)
	if done.State != registry.CommandSucceeded || string(done.Result) != `{"blinked": 2}` {
		t.Fatalf("after the MQTT 5 reply: %s %s", done.State, done.Result)
	}
}

// TestOfflineDelivery: commands sent while the device is offline reach it
// in order when it subscribes; the one that expired meanwhile never does.
func TestOfflineDelivery(t *testing.T) {
	e := newEnv(t, "off-1")
	c1 := e.send(SendRequest{Device: "off-1", Name: "first", Timeout: time.Hour})
	c2 := e.send(SendRequest{Device: "off-1", Name: "short", Timeout: 500 * time.Millisecond})
	c3 := e.send(SendRequest{Device: "off-1", Name: "third", Timeout: time.Hour})
	c4 := e.send(SendRequest{Device: "off-1", Name: "fourth", Timeout: time.Hour})
	// One more that expired without its timer firing (as if the timer were
	// late): inserted straight into the ledger with an expiry in the past.
	stale, _, err := e.reg.InsertCommand(context.Background(), registry.Command{Device: "off-1", Name: "stale",
		ExpiresAt: time.Now().Add(-time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []registry.Command{c1, c2, c3, c4, stale} {
		if c.State != registry.CommandQueued {
			t.Fatalf("%s: %s, want queued", c.Name, c.State)
		}
	}
	e.waitState(c2.ID, registry.CommandExpired)

	d := e.connect("off-1", nil)
	for _, want := range []registry.Command{c1, c3, c4} {
		if got := d.next(); got.ID != want.ID {
			t.Fatalf("got %s (%s), want %s (%s)", got.Name, got.ID, want.Name, want.ID)
		}
	}
	d.none(500 * time.Millisecond)
	for _, c := range []registry.Command{c1, c3, c4} {
		e.waitState(c.ID, registry.CommandDelivered)
	}
	e.waitState(stale.ID, registry.CommandExpired)
	for _, c := range []registry.Command{c2, stale} {
		hist, _ := e.svc.History(context.Background(), c.ID)
		if s := states(hist); s != "queued,expired" {
			t.Fatalf("%s history %s, want queued,expired", c.Name, s)
		}
	}
}

// TestSingleNameSubscription: a device subscribed to commands/a only gets
// a; b stays queued.
func TestSingleNameSubscription(t *testing.T) {
	e := newEnv(t, "one-1")
	a := e.send(SendRequest{Device: "one-1", Name: "a", Timeout: time.Hour})
	b := e.send(SendRequest{Device: "one-1", Name: "b", Timeout: time.Hour})
	d := &device{t: t, id: "one-1", cmds: make(chan Message, 10)}
	d.c = connectBare(t, e.addr, "one-1", e.tokens["one-1"])
	waitToken(t, d.c.Subscribe("devices/one-1/commands/a", 1, func(_ mqtt.Client, m mqtt.Message) {
		var cm Message
		json.Unmarshal(m.Payload(), &cm)
		d.cmds <- cm
	}), "subscribe")
	if got := d.next(); got.ID != a.ID {
		t.Fatalf("got %s, want a", got.Name)
	}
	d.none(300 * time.Millisecond)
	if c, _ := e.svc.Get(context.Background(), b.ID); c.State != registry.CommandQueued {
		t.Fatalf("b is %s, want queued", c.State)
	}
}

// TestRestart: the service and broker stop with commands delivered but
// unanswered, sent but unacknowledged, and queued; the next service on the
// same ledger expires what timed out meanwhile, re-arms the timers, sends
// what the device did not acknowledge and accepts replies to delivered
// ones, which are not sent again.
func TestRestart(t *testing.T) {
	e := newEnv(t, "rs-1")
	d := e.connect("rs-1", nil)
	unanswered := e.send(SendRequest{Device: "rs-1", Name: "unanswered", Timeout: time.Hour})
	short := e.send(SendRequest{Device: "rs-1", Name: "short", Timeout: 4 * time.Second})
	d.next()
	d.next()
	e.waitState(unanswered.ID, registry.CommandDelivered)
	e.waitState(short.ID, registry.CommandDelivered)
	d.c.Disconnect(50)
	testkit.Eventually(t, waitFor, func() bool { return !e.b.Connected("rs-1") }, "the device to go offline")

	queued := e.send(SendRequest{Device: "rs-1", Name: "queued", Timeout: time.Hour})
	overdue := e.send(SendRequest{Device: "rs-1", Name: "overdue", Timeout: 300 * time.Millisecond})
	// sent but never acknowledged: the hub died between publish and PUBACK.
	sent, _, err := e.reg.InsertCommand(context.Background(), registry.Command{Device: "rs-1", Name: "unacked", ExpiresAt: time.Now().Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.reg.TransitionCommand(context.Background(), sent.ID, []registry.CommandState{registry.CommandQueued},
		registry.CommandSent, time.Time{}, nil, "", "test"); err != nil {
		t.Fatal(err)
	}
	e.stop()
	time.Sleep(400 * time.Millisecond) // overdue's expiry passes while nothing runs
	if c, _ := e.reg.Command(context.Background(), overdue.ID); c.State != registry.CommandQueued {
		t.Fatalf("overdue is %s while stopped, want queued", c.State)
	}

	e.start()
	if c, _ := e.reg.Command(context.Background(), overdue.ID); c.State != registry.CommandExpired {
		t.Fatalf("after Start overdue is %s, want expired", c.State)
	}
	d = e.connect("rs-1", nil)
	// Creation order: the queued one, then the unacknowledged one.
	for _, want := range []registry.Command{queued, sent} {
		if got := d.next(); got.ID != want.ID {
			t.Fatalf("after restart got %s, want %s", got.Name, want.Name)
		}
	}
	d.none(500 * time.Millisecond) // not the delivered ones
	e.waitState(queued.ID, registry.CommandDelivered)
	e.waitState(sent.ID, registry.CommandDelivered)

	waitToken(t, d.publishReply(unanswered.ID, Reply{Status: "ok", Result: json.RawMessage(`{"after": "restart"}`)}), "reply")
	if c := e.wait(unanswered.ID); c.State != registry.CommandSucceeded {
		t.Fatalf("unanswered after reply: %s", c.State)
	}
	c := e.wait(short.ID)
	if c.State != registry.CommandExpired || c.UpdatedAt.Sub(c.CreatedAt) < 4*time.Second {
		t.Fatalf("short: %s after %s, want expired after its 4s", c.State, c.UpdatedAt.Sub(c.CreatedAt))
	}
}

// TestIdempotencyKey: the same key gives the same command once.
func TestIdempotencyKey(t *testing.T) {
	e := newEnv(t, "idem-1", "idem-2")
	ctx := context.Background()
	req := SendRequest{Device: "idem-1", Name: "set", Params: json.RawMessage(`{"v": 1}`), IdempotencyKey: "op-42"}
	a, created, err := e.svc.Send(ctx, req)
	if err != nil || !created {
		t.Fatalf("first send: %v created=%v", err, created)
	}
	req.Params = json.RawMessage(`{"v": 2}`)
	b, created, err := e.svc.Send(ctx, req)
	if err != nil || created || b.ID != a.ID || string(b.Params) != `{"v": 1}` {
		t.Fatalf("second send: %v created=%v id=%s params=%s", err, created, b.ID, b.Params)
	}
	other, created, err := e.svc.Send(ctx, SendRequest{Device: "idem-2", Name: "set", IdempotencyKey: "op-42"})
	if err != nil || !created || other.ID == a.ID {
		t.Fatalf("same key, other device: %v created=%v", err, created)
	}
	list, err := e.svc.List(ctx, "idem-1", time.Time{}, 0)
	if err != nil || len(list) != 1 {
		t.Fatalf("idem-1 has %d commands (%v), want 1", len(list), err)
	}
}

// TestRepliesIgnored: replies that do not apply are counted by reason and
// change nothing. HandleReply is called directly for the cases the
// broker's ACL already stops (a device replying on another's topic).
func TestRepliesIgnored(t *testing.T) {
	e := newEnv(t, "own-1", "other-1")
	ctx := context.Background()
	d := e.connect("own-1", nil)
	c := e.send(SendRequest{Device: "own-1", Name: "x", Timeout: time.Hour})
	d.next()
	e.waitState(c.ID, registry.CommandDelivered)
	queued := e.send(SendRequest{Device: "other-1", Name: "x", Timeout: time.Hour})

	ok := []byte(`{"status": "ok"}`)
	for _, tc := range []struct {
		name   string
		in     Incoming
		reason string
	}{
		{"other device's topic", Incoming{Device: "other-1", Topic: telemetry.ReplyTopic("own-1", c.ID), Payload: ok}, "foreign"},
		{"own topic, other's command", Incoming{Device: "other-1", Topic: telemetry.ReplyTopic("other-1", c.ID), Payload: ok}, "foreign"},
		{"unknown command", Incoming{Device: "own-1", Topic: telemetry.ReplyTopic("own-1", "nope"), Payload: ok}, "unknown"},
		{"not JSON", Incoming{Device: "own-1", Topic: telemetry.ReplyTopic("own-1", c.ID), Payload: []byte("done")}, "malformed"},
		{"bad status", Incoming{Device: "own-1", Topic: telemetry.ReplyTopic("own-1", c.ID), Payload: []byte(`{"status": "fine"}`)}, "malformed"},
		{"wrong correlation", Incoming{Device: "own-1", Topic: telemetry.ReplyTopic("own-1", c.ID), Payload: ok, CorrelationData: []byte("zz")}, "malformed"},
		{"not a reply topic", Incoming{Device: "own-1", Topic: "devices/own-1/telemetry", Payload: ok}, "malformed"},
		{"never sent", Incoming{Device: "other-1", Topic: telemetry.ReplyTopic("other-1", queued.ID), Payload: ok}, "not_sent"},
	} {
		before := testutil.ToFloat64(e.svc.m.repliesIgnored.WithLabelValues(tc.reason))
		if err := e.svc.HandleReply(ctx, tc.in); err != nil {
			t.Errorf("%s: HandleReply returned %v, want nil", tc.name, err)
		}
		if got := testutil.ToFloat64(e.svc.m.repliesIgnored.WithLabelValues(tc.reason)); got != before+1 {
			t.Errorf("%s: %s counter %v -> %v", tc.name, tc.reason, before, got)
		}
	}
	if got, _ := e.svc.Get(ctx, c.ID); got.State != registry.CommandDelivered {
		t.Fatalf("state after ignored replies: %s", got.State)
	}

	// Through the broker: another device's publish on own-1's replies is
	// refused by the ACL and never reaches the service.
	od := e.connect("other-1", nil)
	od.next() // its own queued command
	b, _ := json.Marshal(Reply{Status: "error", Error: "spoofed"})
	od.c.Publish(telemetry.ReplyTopic("own-1", c.ID), 1, false, b).WaitTimeout(5 * time.Second)
	time.Sleep(300 * time.Millisecond)
	if got, _ := e.svc.Get(ctx, c.ID); got.State != registry.CommandDelivered {
		t.Fatalf("a reply from another device changed the state to %s", got.State)
	}

	// The real reply applies; a second one is a duplicate.
	waitToken(t, d.publishReply(c.ID, Reply{Status: "ok", Result: json.RawMessage(`{"n": 1}`)}), "reply")
	if got := e.wait(c.ID); got.State != registry.CommandSucceeded {
		t.Fatalf("state %s", got.State)
	}
	waitToken(t, d.publishReply(c.ID, Reply{Status: "error", Error: "again"}), "second reply")
	testkit.Eventually(t, waitFor, func() bool {
		return testutil.ToFloat64(e.svc.m.repliesIgnored.WithLabelValues("duplicate")) == 1
	}, "the duplicate to be counted")
	if got, _ := e.svc.Get(ctx, c.ID); got.State != registry.CommandSucceeded || !jsonEqual(got.Result, json.RawMessage(`{"n": 1}`)) {
		t.Fatalf("duplicate reply changed the command: %s %s", got.State, got.Result)
	}
}

// TestCancel: a cancelled command is never delivered; cancelling a final
// command is ErrFinal.
func TestCancel(t *testing.T) {
	e := newEnv(t, "cx-1")
	ctx := context.Background()
	c := e.send(SendRequest{Device: "cx-1", Name: "never", Timeout: time.Hour})
	keep := e.send(SendRequest{Device: "cx-1", Name: "keep", Timeout: time.Hour})
	got, err := e.svc.Cancel(ctx, c.ID)
	if err != nil || got.State != registry.CommandCancelled {
		t.Fatalf("cancel: %v %s", err, got.State)
	}
	if _, err := e.svc.Cancel(ctx, c.ID); !errors.Is(err, ErrFinal) || !errors.Is(err, registry.ErrConflict) {
		t.Fatalf("cancel twice: %v, want ErrFinal", err)
	}
	if _, err := e.svc.Cancel(ctx, "missing"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("cancel unknown: %v", err)
	}
	d := e.connect("cx-1", nil)
	if m := d.next(); m.ID != keep.ID {
		t.Fatalf("got %s, want keep", m.Name)
	}
	d.none(300 * time.Millisecond)
	// Cancelling a delivered command works too.
	e.waitState(keep.ID, registry.CommandDelivered)
	if got, err := e.svc.Cancel(ctx, keep.ID); err != nil || got.State != registry.CommandCancelled {
		t.Fatalf("cancel delivered: %v %s", err, got.State)
	}
	if n := testutil.ToFloat64(e.svc.m.final.WithLabelValues("cancelled")); n != 2 {
		t.Fatalf("cancelled counter %v", n)
	}
}

// TestListenersAndWait: listeners see every transition in order; Wait
// returns when the command is final and honours its context.
func TestListenersAndWait(t *testing.T) {
	e := newEnv(t, "ls-1")
	var mu sync.Mutex
	var seen []string
	unsub := e.svc.Subscribe(func(c Change) {
		mu.Lock()
		seen = append(seen, string(c.From)+">"+string(c.To))
		mu.Unlock()
	})
	defer unsub()
	c := e.send(SendRequest{Device: "ls-1", Name: "x", Timeout: time.Hour})

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if got, err := e.svc.Wait(ctx, c.ID); !errors.Is(err, context.DeadlineExceeded) || got.State != registry.CommandQueued {
		t.Fatalf("wait on a queued command: %v %s", err, got.State)
	}
	done := make(chan registry.Command)
	go func() {
		got, _ := e.svc.Wait(context.Background(), c.ID)
		done <- got
	}()
	d := e.connect("ls-1", nil)
	d.next()
	e.waitState(c.ID, registry.CommandDelivered)
	waitToken(t, d.publishReply(c.ID, Reply{Status: "ok"}), "reply")
	select {
	case got := <-done:
		if got.State != registry.CommandSucceeded {
			t.Fatalf("Wait returned %s", got.State)
		}
	case <-time.After(waitFor):
		t.Fatal("Wait did not return")
	}
	testkit.Eventually(t, waitFor, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) == 4
	}, "4 changes")
	mu.Lock()
	defer mu.Unlock()
	if s := strings.Join(seen, " "); s != ">queued queued>sent sent>delivered delivered>succeeded" {
		t.Fatalf("listener saw %s", s)
	}
}

// TestSendValidation: bad requests are refused with ErrInvalid (or
// ErrNotFound) and counted.
func TestSendValidation(t *testing.T) {
	e := newEnv(t, "val-1")
	for _, tc := range []struct {
		name   string
		req    SendRequest
		reason string
		target error
	}{
		{"slash in name", SendRequest{Device: "val-1", Name: "a/b"}, "invalid_name", ErrInvalid},
		{"wildcard in name", SendRequest{Device: "val-1", Name: "a+"}, "invalid_name", ErrInvalid},
		{"empty name", SendRequest{Device: "val-1"}, "invalid_name", ErrInvalid},
		{"long name", SendRequest{Device: "val-1", Name: strings.Repeat("n", 65)}, "invalid_name", ErrInvalid},
		{"params array", SendRequest{Device: "val-1", Name: "x", Params: json.RawMessage(`[1]`)}, "invalid_params", ErrInvalid},
		{"params broken", SendRequest{Device: "val-1", Name: "x", Params: json.RawMessage(`{"a":`)}, "invalid_params", ErrInvalid},
		{"timeout too long", SendRequest{Device: "val-1", Name: "x", Timeout: 25 * time.Hour}, "invalid_timeout", ErrInvalid},
		{"negative timeout", SendRequest{Device: "val-1", Name: "x", Timeout: -time.Second}, "invalid_timeout", ErrInvalid},
		{"bad device id", SendRequest{Device: "a/b", Name: "x"}, "invalid_device", ErrInvalid},
		{"unknown device", SendRequest{Device: "ghost", Name: "x"}, "unknown_device", ErrNotFound},
	} {
		_, _, err := e.svc.Send(context.Background(), tc.req)
		if !errors.Is(err, tc.target) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.target)
		}
		if n := testutil.ToFloat64(e.svc.m.rejected.WithLabelValues(tc.reason)); n < 1 {
			t.Errorf("%s: reason %s not counted", tc.name, tc.reason)
		}
	}
	c := e.send(SendRequest{Device: "val-1", Name: "x", Params: json.RawMessage(" null ")})
	if string(c.Params) != "{}" || c.ExpiresAt.Sub(c.CreatedAt) != time.Minute {
		t.Fatalf("defaults: params %s, timeout %s", c.Params, c.ExpiresAt.Sub(c.CreatedAt))
	}
}

// TestPersistentSessionResume: a device that resumes a persistent session
// does not subscribe again [MQTT-3.2.2-3]; the commands queued while it was
// away still reach it, through the subscription it kept.
func TestPersistentSessionResume(t *testing.T) {
	e := newEnv(t, "ps-1")
	got := make(chan Message, 10)
	opts := func() *mqtt.ClientOptions {
		return mqtt.NewClientOptions().AddBroker("tcp://" + e.addr).SetClientID("ps-1").SetUsername("ps-1").
			SetPassword(e.tokens["ps-1"]).SetAutoReconnect(false).SetCleanSession(false).
			SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) {
				var cm Message
				json.Unmarshal(m.Payload(), &cm)
				got <- cm
			})
	}
	c := mqtt.NewClient(opts())
	waitToken(t, c.Connect(), "connect")
	waitToken(t, c.Subscribe("devices/ps-1/commands/#", 1, nil), "subscribe")
	c.Disconnect(50)
	testkit.Eventually(t, 10*time.Second, func() bool { return !e.b.Connected("ps-1") }, "the device to go offline")

	cmd := e.send(SendRequest{Device: "ps-1", Name: "resume", Timeout: time.Hour})
	c = mqtt.NewClient(opts())
	waitToken(t, c.Connect(), "reconnect without subscribing")
	t.Cleanup(func() { c.Disconnect(50) })
	select {
	case m := <-got:
		if m.ID != cmd.ID {
			t.Fatalf("got command %s, want %s", m.ID, cmd.ID)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the queued command never reached the resumed session")
	}
	e.waitState(cmd.ID, registry.CommandDelivered)
}
