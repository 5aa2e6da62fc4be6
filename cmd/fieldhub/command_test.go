package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldhub/fieldhub/command"
	"github.com/fieldhub/fieldhub/dashboard"
	"github.com/fieldhub/fieldhub/internal/testkit"
	"github.com/fieldhub/fieldhub/internal/testkit/hubproc"
	"github.com/fieldhub/fieldhub/registry"
)

// cmdDevice is a paho device of the binary-level command tests.
type cmdDevice struct {
	t    *testing.T
	id   string
	c    mqtt.Client
	got  chan command.Message
	msgs chan mqtt.Message // for manual acks
}

// connectCmdDevice connects id to the hub and subscribes to its commands.
// answer (may be nil) picks the reply for each command; with manualAck
// the device does not PUBACK by itself (see ack).
func connectCmdDevice(t *testing.T, p *hubproc.Proc, id, token string, manualAck bool, answer func(command.Message) *command.Reply) *cmdDevice {
	t.Helper()
	d := &cmdDevice{t: t, id: id, got: make(chan command.Message, 100), msgs: make(chan mqtt.Message, 100)}
	o := mqtt.NewClientOptions().AddBroker("tcp://" + p.Addrs().MQTT).SetClientID(id).SetUsername(id).SetPassword(token).
		SetAutoReconnect(false).SetConnectTimeout(10 * time.Second).SetAutoAckDisabled(manualAck)
	d.c = mqtt.NewClient(o)
	if tk := d.c.Connect(); !tk.WaitTimeout(20*time.Second) || tk.Error() != nil {
		t.Fatalf("%s connect: %v", id, tk.Error())
	}
	t.Cleanup(func() { d.c.Disconnect(50) })
	tk := d.c.Subscribe("devices/"+id+"/commands/#", 1, func(cl mqtt.Client, m mqtt.Message) {
		var cm command.Message
		if err := json.Unmarshal(m.Payload(), &cm); err != nil {
			t.Errorf("%s: command payload %q: %v", id, m.Payload(), err)
			return
		}
		d.got <- cm
		d.msgs <- m
		if answer != nil {
			if r := answer(cm); r != nil {
				b, _ := json.Marshal(r)
				cl.Publish("devices/"+id+"/replies/"+cm.ID, 1, false, b)
			}
		}
	})
	if !tk.WaitTimeout(20*time.Second) || tk.Error() != nil {
		t.Fatalf("%s subscribe: %v", id, tk.Error())
	}
	return d
}

func (d *cmdDevice) next() (command.Message, mqtt.Message) {
	d.t.Helper()
	select {
	case m := <-d.got:
		return m, <-d.msgs
	case <-time.After(30 * time.Second):
		d.t.Fatalf("%s: no command within 30s", d.id)
	}
	return command.Message{}, nil
}

func (d *cmdDevice) reply(id string, r command.Reply) {
	d.t.Helper()
	b, _ := json.Marshal(r)
	if tk := d.c.Publish("devices/"+d.id+"/replies/"+id, 1, false, b); !tk.WaitTimeout(20*time.Second) || tk.Error() != nil {
		d.t.Fatalf("%s reply: %v", d.id, tk.Error())
	}
}

// compactJSON undoes the CLI's indentation.
func compactJSON(b []byte) string {
	var out bytes.Buffer
	if err := json.Compact(&out, b); err != nil {
		return string(b)
	}
	return out.String()
}

// addDeviceCLI adds a device with `fieldhub device add` and returns its token.
func addDeviceCLI(t *testing.T, dataDir, id string) string {
	t.Helper()
	out, errOut, err := run(t, nil, "device", "add", id, "--data-dir", dataDir)
	if err != nil {
		t.Fatalf("device add %s: %v %s", id, err, errOut)
	}
	return strings.TrimSpace(out)
}

// cli runs a fieldhub command on dataDir and decodes its JSON output into
// out (when not nil); it returns the exit code and stderr.
func cli(t *testing.T, dataDir string, out any, args ...string) (int, string) {
	t.Helper()
	stdout, stderr, err := run(t, nil, append(args, "--data-dir", dataDir)...)
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("fieldhub %v: %v", args, err)
	}
	if out != nil && code != 1 {
		if err := json.Unmarshal([]byte(stdout), out); err != nil {
			t.Fatalf("fieldhub %v: output %q: %v (stderr %s)", args, stdout, err, stderr)
		}
	}
	return code, stderr
}

func showCommand(t *testing.T, dataDir, id string) dashboard.CommandView {
	t.Helper()
	var v dashboard.CommandView
	if code, errOut := cli(t, dataDir, &v, "command", "show", id); code != 0 {
		t.Fatalf("command show %s: exit %d %s", id, code, errOut)
	}
	return v
}

func waitCommandState(t *testing.T, dataDir, id string, want registry.CommandState) dashboard.CommandView {
	t.Helper()
	var v dashboard.CommandView
	testkit.Eventually(t, 60*time.Second, func() bool {
		v = showCommand(t, dataDir, id)
		return v.State == want
	}, "command "+id+" to be "+string(want))
	return v
}

// TestCommandSendWaitCLI: `fieldhub command send --wait` against `fieldhub
// serve` and a paho device: succeeded with the result (exit 0), failed
// (exit 2), expired at the timeout (exit 3); list, show, cancel, and a
// clear message when no hub runs.
func TestCommandSendWaitCLI(t *testing.T) {
	dataDir := t.TempDir()
	p := startHubProc(t, dataDir)
	tok := addDeviceCLI(t, dataDir, "cli-cmd")
	connectCmdDevice(t, p, "cli-cmd", tok, false, func(m command.Message) *command.Reply {
		switch m.Name {
		case "ok":
			return &command.Reply{Status: "ok", Result: json.RawMessage(`{"echo": ` + string(m.Params) + `}`)}
		case "fail":
			return &command.Reply{Status: "error", Error: "no luck"}
		}
		return nil
	})

	var v dashboard.CommandView
	if code, errOut := cli(t, dataDir, &v, "command", "send", "cli-cmd", "ok", "--params", `{"x": 1}`, "--wait"); code != 0 {
		t.Fatalf("send ok --wait: exit %d %s", code, errOut)
	}
	if v.State != registry.CommandSucceeded || !v.Final || compactJSON(v.Result) != `{"echo":{"x":1}}` {
		t.Fatalf("send ok --wait printed %+v (result %s)", v, v.Result)
	}
	okID := v.ID

	if code, _ := cli(t, dataDir, &v, "command", "send", "cli-cmd", "fail", "--wait"); code != exitCommandFailed {
		t.Fatalf("send fail --wait: exit %d, want %d", code, exitCommandFailed)
	}
	if v.State != registry.CommandFailed || v.Error != "no luck" {
		t.Fatalf("send fail --wait printed %+v", v)
	}

	start := time.Now()
	if code, _ := cli(t, dataDir, &v, "command", "send", "cli-cmd", "silent", "--timeout", "2s", "--wait"); code != exitCommandExpired {
		t.Fatalf("send silent --wait: exit %d, want %d", code, exitCommandExpired)
	}
	if v.State != registry.CommandExpired || time.Since(start) < 2*time.Second || v.UpdatedAt.Sub(v.CreatedAt) < 2*time.Second {
		t.Fatalf("send silent --wait printed %+v after %s", v, time.Since(start))
	}

	// Same key, same command.
	var k1, k2 dashboard.CommandView
	cli(t, dataDir, &k1, "command", "send", "cli-cmd", "silent", "--key", "once", "--timeout", "1h")
	cli(t, dataDir, &k2, "command", "send", "cli-cmd", "silent", "--key", "once")
	if k1.ID == "" || k1.ID != k2.ID {
		t.Fatalf("same key gave %s and %s", k1.ID, k2.ID)
	}
	var cancelled dashboard.CommandView
	if code, errOut := cli(t, dataDir, &cancelled, "command", "cancel", k1.ID); code != 0 || cancelled.State != registry.CommandCancelled {
		t.Fatalf("cancel: exit %d %s %+v", code, errOut, cancelled)
	}
	if code, errOut := cli(t, dataDir, nil, "command", "cancel", okID); code == 0 || !strings.Contains(errOut, "final") {
		t.Fatalf("cancel a final command: exit %d %q", code, errOut)
	}

	var list []dashboard.CommandView
	if code, _ := cli(t, dataDir, &list, "command", "list", "cli-cmd"); code != 0 || len(list) != 4 {
		t.Fatalf("command list: exit %d, %d commands", code, len(list))
	}
	show := showCommand(t, dataDir, okID)
	var hist []string
	for _, h := range show.History {
		hist = append(hist, string(h.To))
	}
	if h := strings.Join(hist, ","); h != "queued,sent,delivered,succeeded" && h != "queued,sent,succeeded" {
		t.Fatalf("history %s", h)
	}

	if code, errOut := cli(t, dataDir, nil, "command", "send", "ghost", "x"); code != 1 || !strings.Contains(errOut, "does not exist") && !strings.Contains(errOut, "not found") {
		t.Fatalf("unknown device: exit %d %q", code, errOut)
	}
	if code, errOut := cli(t, t.TempDir(), nil, "command", "send", "cli-cmd", "x"); code != 1 || !strings.Contains(errOut, "no hub is running") {
		t.Fatalf("without a hub: exit %d %q", code, errOut)
	}
	if code, errOut := cli(t, t.TempDir(), nil, "twin", "get", "cli-cmd"); code != 1 || !strings.Contains(errOut, "no hub is running") {
		t.Fatalf("twin without a hub: exit %d %q", code, errOut)
	}
}

// TestCommandRestartKill9: the hub is killed with SIGKILL while commands
// are delivered-but-unanswered, sent-but-unacknowledged and queued. After
// the restart the device gets the unacknowledged and the queued ones (in
// that order, the delivered ones not again), replies complete the
// unanswered ones, and the one with a short timeout expires on time.
func TestCommandRestartKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the hub as a child process")
	}
	dataDir := t.TempDir()
	p := startHubProc(t, dataDir)
	tok := addDeviceCLI(t, dataDir, "k9-cmd")
	d := connectCmdDevice(t, p, "k9-cmd", tok, true, nil)

	send := func(name, timeout string) dashboard.CommandView {
		t.Helper()
		var v dashboard.CommandView
		if code, errOut := cli(t, dataDir, &v, "command", "send", "k9-cmd", name, "--timeout", timeout); code != 0 {
			t.Fatalf("send %s: exit %d %s", name, code, errOut)
		}
		return v
	}
	delivered := send("delivered", "1h")
	if m, raw := d.next(); m.ID != delivered.ID {
		t.Fatalf("got %s, want delivered", m.Name)
	} else {
		raw.Ack()
	}
	short := send("short", "20s")
	if m, raw := d.next(); m.ID != short.ID {
		t.Fatalf("got %s, want short", m.Name)
	} else {
		raw.Ack()
	}
	unacked := send("unacked", "1h")
	if m, _ := d.next(); m.ID != unacked.ID { // no PUBACK
		t.Fatalf("got %s, want unacked", m.Name)
	}
	waitCommandState(t, dataDir, delivered.ID, registry.CommandDelivered)
	waitCommandState(t, dataDir, short.ID, registry.CommandDelivered)
	if v := showCommand(t, dataDir, unacked.ID); v.State != registry.CommandSent {
		t.Fatalf("unacked is %s, want sent", v.State)
	}
	d.c.Disconnect(50)
	// Once the registry says offline, the broker has dropped the session
	// (it records presence after that), so the next command stays queued.
	testkit.Eventually(t, 30*time.Second, func() bool {
		var dev registry.Device
		cli(t, dataDir, &dev, "device", "show", "k9-cmd")
		return !dev.Online
	}, "the device to be offline")
	queued := send("queued", "1h")
	if queued.State != registry.CommandQueued {
		t.Fatalf("command for the offline device is %s, want queued", queued.State)
	}

	p.Signal(syscall.SIGKILL)
	p.Wait()

	p2 := startHubProc(t, dataDir)
	d2 := connectCmdDevice(t, p2, "k9-cmd", tok, false, nil)
	for _, want := range []dashboard.CommandView{unacked, queued} {
		if m, _ := d2.next(); m.ID != want.ID {
			t.Fatalf("after restart got %s (%s), want %s", m.Name, m.ID, want.Name)
		}
	}
	select {
	case m := <-d2.got: // the delivered ones must not come again
		t.Fatalf("%s was delivered again after the restart", m.Name)
	case <-time.After(time.Second):
	}
	d2.reply(delivered.ID, command.Reply{Status: "ok", Result: json.RawMessage(`{"after": "kill -9"}`)})
	d2.reply(unacked.ID, command.Reply{Status: "error", Error: "too late to act"})
	d2.reply(queued.ID, command.Reply{Status: "ok"})
	if v := waitCommandState(t, dataDir, delivered.ID, registry.CommandSucceeded); compactJSON(v.Result) != `{"after":"kill -9"}` {
		t.Fatalf("delivered: result %s", v.Result)
	}
	waitCommandState(t, dataDir, unacked.ID, registry.CommandFailed)
	waitCommandState(t, dataDir, queued.ID, registry.CommandSucceeded)
	v := waitCommandState(t, dataDir, short.ID, registry.CommandExpired)
	if took := v.UpdatedAt.Sub(v.CreatedAt); took < 20*time.Second {
		t.Fatalf("short expired after %s, before its 20s timeout", took)
	}
	t.Logf("short expired %s after creation (timeout 20s)", v.UpdatedAt.Sub(v.CreatedAt).Round(time.Millisecond))
}

// TestTwinCLI: desired state set while the device is offline reaches it
// when it connects; its report updates reported and empties the delta.
func TestTwinCLI(t *testing.T) {
	dataDir := t.TempDir()
	p := startHubProc(t, dataDir)
	tok := addDeviceCLI(t, dataDir, "twin-cli")

	var td registry.TwinDoc
	if code, errOut := cli(t, dataDir, &td, "twin", "set", "twin-cli", `{"interval": 30, "mode": "eco"}`); code != 0 || td.Version != 1 {
		t.Fatalf("twin set: exit %d %s %+v", code, errOut, td)
	}
	var tw command.TwinView
	cli(t, dataDir, &tw, "twin", "get", "twin-cli")
	if len(tw.Delta) != 2 {
		t.Fatalf("delta before the device reported: %v", tw.Delta)
	}

	got := make(chan command.DesiredMessage, 10)
	o := mqtt.NewClientOptions().AddBroker("tcp://" + p.Addrs().MQTT).SetClientID("twin-cli").SetUsername("twin-cli").SetPassword(tok).SetAutoReconnect(false)
	c := mqtt.NewClient(o)
	if tk := c.Connect(); !tk.WaitTimeout(20*time.Second) || tk.Error() != nil {
		t.Fatalf("connect: %v", tk.Error())
	}
	defer c.Disconnect(50)
	c.Subscribe("devices/twin-cli/twin/desired", 1, func(_ mqtt.Client, m mqtt.Message) {
		var dm command.DesiredMessage
		json.Unmarshal(m.Payload(), &dm)
		got <- dm
	}).WaitTimeout(20 * time.Second)
	var dm command.DesiredMessage
	select {
	case dm = <-got:
	case <-time.After(30 * time.Second):
		t.Fatal("the device did not get its desired state")
	}
	if dm.Version != 1 || !strings.Contains(string(dm.Desired), `"mode"`) {
		t.Fatalf("device got %+v", dm)
	}
	if tk := c.Publish("devices/twin-cli/twin/reported", 1, false, `{"version": 1, "reported": {"interval": 30, "mode": "eco", "fw": "1.2"}}`); !tk.WaitTimeout(20*time.Second) || tk.Error() != nil {
		t.Fatalf("report: %v", tk.Error())
	}
	tw = command.TwinView{} // Unmarshal would merge into the old Delta map
	cli(t, dataDir, &tw, "twin", "get", "twin-cli")
	if tw.Reported.Version != 1 || len(tw.Delta) != 0 || !strings.Contains(string(tw.Reported.Doc), `"fw"`) {
		t.Fatalf("after the report: %+v", tw)
	}

	// stdin form.
	cmd := exec.Command(hubproc.Build(t), "twin", "set", "twin-cli", "-", "--data-dir", dataDir)
	cmd.Stdin = strings.NewReader(`{"interval": 60}`)
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), `"version": 2`) {
		t.Fatalf("twin set from stdin: %v %s", err, out)
	}
	select {
	case dm = <-got:
		if dm.Version != 2 {
			t.Fatalf("device got version %d, want 2", dm.Version)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the connected device did not get version 2")
	}
}
