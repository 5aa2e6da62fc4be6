package hub

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldhub/fieldhub/command"
	"github.com/fieldhub/fieldhub/config"
	"github.com/fieldhub/fieldhub/internal/testkit"
	"github.com/fieldhub/fieldhub/internal/testkit/hubproc"
	"github.com/fieldhub/fieldhub/internal/testkit/influxdtest"
	"github.com/fieldhub/fieldhub/internal/testkit/mosquittotest"
	"github.com/fieldhub/fieldhub/registry"
	"github.com/fieldhub/fieldhub/store"
	"github.com/fieldhub/fieldhub/store/influx"
)

const roleWait = 60 * time.Second // generous: a shared 2-core machine

// workerProc is `fieldhub serve --config` as a child process, restartable
// with the same config (and so the same client id and data_dir).
type workerProc struct {
	*hubproc.Proc
	t    *testing.T
	name string
}

func startWorker(t *testing.T, name, confYAML string) *workerProc {
	t.Helper()
	dir := t.TempDir()
	dataDir, conf := filepath.Join(dir, "data"), filepath.Join(dir, "fieldhub.yaml")
	body := "data_dir: " + strconv.Quote(dataDir) + "\nhttp:\n  addr: \"127.0.0.1:0\"\n" + confYAML
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return &workerProc{Proc: hubproc.StartArgs(t, dataDir, []string{"--config", conf}), t: t, name: name}
}

// start starts the worker again: same config, same client id, its session resumes.
func (w *workerProc) start() { w.Restart() }

// kill sends SIGKILL: no shutdown, unacknowledged messages stay unacknowledged.
func (w *workerProc) kill() {
	_ = w.Signal(syscall.SIGKILL)
	w.Wait()
}

// stop is an orderly shutdown (SIGTERM).
func (w *workerProc) stop() { w.Stop(30 * time.Second) }

// metric reads one sample of the worker's /metrics (with its admin token).
func (w *workerProc) metric(name, labelMatch string) float64 {
	w.t.Helper()
	addr := w.Addrs().HTTP
	tok, err := os.ReadFile(filepath.Join(w.DataDir, AdminTokenFile))
	if err != nil {
		w.t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		w.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		w.t.Fatalf("%s /metrics: %s", w.name, resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, name+"{") && strings.Contains(line, labelMatch) {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			return v
		}
	}
	return 0
}

func workerYAML(mqttURL, clientID string, ix *influxdtest.Server) string {
	return fmt.Sprintf(`roles: [ingest]
log:
  level: info
mqtt:
  url: %s
  client_id: %s
store:
  backend: influx
  influx:
    url: %s
    token: %q
    org: %q
    bucket: %q
`, mqttURL, clientID, ix.URL, ix.Token, ix.Org, ix.Bucket)
}

// stream publishes numbered QoS 1 readings for devices dev-0..dev-{d-1},
// m per device, from one paho client per device (the broker is anonymous
// here: Mosquitto's auth is not what is tested). Reading i of a device has
// ts base+10*i and metric n = i.
type stream struct {
	devices, perDevice int
	base               int64
	published          atomic.Int64
}

func (s *stream) topic(d int) string { return fmt.Sprintf("devices/dev-%d/telemetry", d) }

func (s *stream) run(t *testing.T, url string, pace time.Duration) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, s.devices)
	for d := 0; d < s.devices; d++ {
		cl := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID(fmt.Sprintf("dev-%d", d)).SetCleanSession(true))
		if tok := cl.Connect(); !tok.WaitTimeout(roleWait) || tok.Error() != nil {
			t.Fatalf("device connect: %v", tok.Error())
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer cl.Disconnect(50)
			for i := 0; i < s.perDevice; i++ {
				p := fmt.Sprintf(`{"ts": %d, "seq": %d, "metrics": {"n": %d}}`, s.base+int64(10*i), i, i)
				tok := cl.Publish(s.topic(d), 1, false, p)
				if !tok.WaitTimeout(roleWait) || tok.Error() != nil {
					errs <- fmt.Errorf("publish dev-%d #%d: %v", d, i, tok.Error())
					return
				}
				s.published.Add(1)
				if pace > 0 {
					time.Sleep(pace)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// storedCounts reads every device's series back through the store's own
// query API and returns how many distinct readings each holds, failing
// on a reading that is not one the stream sent.
func (s *stream) stored(t *testing.T, st store.Querier) (total int, perDevice []int) {
	t.Helper()
	perDevice = make([]int, s.devices)
	for d := 0; d < s.devices; d++ {
		pts, err := st.Series(context.Background(), store.SeriesQuery{Device: fmt.Sprintf("dev-%d", d), Metric: "n",
			From: s.base, To: s.base + int64(10*s.perDevice)})
		if err != nil {
			t.Fatal(err)
		}
		seen := map[int64]bool{}
		for _, p := range pts {
			i := (p.TS - s.base) / 10
			if p.TS != s.base+10*i || float64(i) != p.Value || seen[p.TS] {
				t.Fatalf("dev-%d holds an unexpected point %+v", d, p)
			}
			seen[p.TS] = true
		}
		perDevice[d] = len(pts)
		total += len(pts)
	}
	return total, perDevice
}

func openInflux(t *testing.T, ix *influxdtest.Server) *influx.Store {
	t.Helper()
	st, err := influx.Open(context.Background(), influx.Options{URL: ix.URL, Token: ix.Token, Org: ix.Org, Bucket: ix.Bucket})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// TestIngestWorkersShareMosquitto: two `fieldhub serve --roles ingest`
// processes behind a real Mosquitto share one stream of numbered QoS 1
// readings through the shared subscription, writing to one real influxd.
// Both get a share. One is killed with SIGKILL mid-stream: its share stays
// queued in its session at the broker (Mosquitto hands a shared
// subscription's messages to offline members' sessions too) until it is
// restarted with the same client id; then every reading is stored, once.
func TestIngestWorkersShareMosquitto(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Mosquitto, influxd and two fieldhub processes")
	}
	mq := mosquittotest.Start(t, mosquittotest.Options{})
	ix := influxdtest.Start(t)
	a := startWorker(t, "worker-a", workerYAML(mq.URL, "worker-a", ix))
	b := startWorker(t, "worker-b", workerYAML(mq.URL, "worker-b", ix))
	st := openInflux(t, ix)

	s := &stream{devices: 10, perDevice: 300, base: time.Now().Add(-10 * time.Minute).Truncate(time.Second).UnixMilli()}
	n := s.devices * s.perDevice
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.run(t, mq.URL, 2*time.Millisecond) // paced, so the kill lands mid-stream
	}()

	const acked = `fieldhub_extmqtt_messages_total`
	testkit.Eventually(t, roleWait, func() bool {
		return a.metric(acked, `result="acked"`) > 0 && b.metric(acked, `result="acked"`) > 0 && s.published.Load() >= int64(n/3)
	}, "both workers to take a share of the first third")
	aBefore := a.metric(acked, `result="acked"`)
	a.kill()
	killedAt := s.published.Load()
	t.Logf("worker-a killed with SIGKILL after %d of %d readings were published (it had acknowledged %.0f)", killedAt, n, aBefore)
	if killedAt >= int64(n) {
		t.Fatal("the stream ended before the kill")
	}
	<-done

	// worker-b stores its share; worker-a's waits in its session.
	testkit.Eventually(t, roleWait, func() bool {
		return b.metric("fieldhub_extmqtt_handling", "") == 0 && b.metric(acked, `result="acked"`) > 0
	}, "worker-b to be idle")
	time.Sleep(time.Second)
	before, _ := s.stored(t, st)
	if before >= n {
		t.Fatalf("all %d readings stored while worker-a was dead; its share should wait for it", before)
	}
	t.Logf("while worker-a is down: %d of %d stored", before, n)

	a.start() // same config: same client id, its session resumes
	testkit.Eventually(t, roleWait, func() bool {
		total, _ := s.stored(t, st)
		return total == n
	}, "every reading to be stored after worker-a's restart")
	total, per := s.stored(t, st)
	for d, c := range per {
		if c != s.perDevice {
			t.Errorf("dev-%d: %d readings stored, want %d", d, c, s.perDevice)
		}
	}
	t.Logf("stored %d readings, once each; worker-a took %.0f after its restart, worker-b %.0f in all",
		total, a.metric(acked, `result="acked"`), b.metric(acked, `result="acked"`))
	if a.metric(acked, `result="acked"`) == 0 {
		t.Error("the restarted worker-a took nothing: its session's messages were not redelivered to it")
	}
}

// TestCommandRoleThroughMosquitto: `--roles command` alone, against a real
// Mosquitto: a command sent while the device is offline goes out at once
// (queued → sent), the broker keeps it in the device's persistent session,
// the device gets it on reconnecting and replies; the reply, taken through
// the shared subscription, makes it succeeded. There is no "delivered"
// through an external broker. Twin reports and desired state go through the
// same broker.
func TestCommandRoleThroughMosquitto(t *testing.T) {
	mq := mosquittotest.Start(t, mosquittotest.Options{})
	cfg := testConfig(t)
	cfg.Roles = []string{config.RoleCommand}
	cfg.MQTT.URL = mq.URL
	cfg.MQTT.ClientID = "cmd-worker"
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	h := startHub(t, cfg)
	if h.Broker != nil || h.Ingest != nil || h.Store != nil {
		t.Fatalf("the command role alone must run no broker, ingest or store: %v %v %v", h.Broker, h.Ingest, h.Store)
	}
	addDevice(t, h, "pump-1", "")
	ctx := context.Background()

	// The device has a persistent session with its subscription, then goes
	// offline.
	dev := deviceClient(t, mq.URL, "pump-1", nil)
	if tok := dev.Subscribe("devices/pump-1/commands/#", 1, nil); !tok.WaitTimeout(roleWait) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	dev.Disconnect(100)

	cmd, created, err := h.Commands.Send(ctx, command.SendRequest{Device: "pump-1", Name: "flush", Params: []byte(`{"seconds": 3}`), Timeout: time.Minute})
	if err != nil || !created {
		t.Fatalf("send: %v %v", created, err)
	}
	testkit.Eventually(t, roleWait, func() bool {
		c, err := h.Commands.Get(ctx, cmd.ID)
		return err == nil && c.State == registry.CommandSent
	}, "the command to be sent to the broker")

	// The device comes back: the broker delivers the command from its
	// session, and the device replies.
	got := make(chan mqtt.Message, 4)
	dev = deviceClient(t, mq.URL, "pump-1", func(_ mqtt.Client, m mqtt.Message) { got <- m })
	var msg command.Message
	select {
	case m := <-got:
		if m.Topic() != "devices/pump-1/commands/flush" {
			t.Fatalf("topic %q", m.Topic())
		}
		if err := json.Unmarshal(m.Payload(), &msg); err != nil || msg.ID != cmd.ID || string(msg.Params) != `{"seconds": 3}` && string(msg.Params) != `{"seconds":3}` {
			t.Fatalf("command payload %s: %v", m.Payload(), err)
		}
	case <-time.After(roleWait):
		t.Fatal("the device did not get the command")
	}
	if tok := dev.Publish("devices/pump-1/replies/"+cmd.ID, 1, false, `{"status":"ok","result":{"flushed":true}}`); !tok.WaitTimeout(roleWait) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	wctx, cancel := context.WithTimeout(ctx, roleWait)
	defer cancel()
	final, err := h.Commands.Wait(wctx, cmd.ID)
	if err != nil || final.State != registry.CommandSucceeded || !strings.Contains(string(final.Result), "flushed") {
		t.Fatalf("final: %+v %v", final, err)
	}
	hist, err := h.Commands.History(ctx, cmd.ID)
	if err != nil {
		t.Fatal(err)
	}
	var states []string
	for _, tr := range hist {
		states = append(states, string(tr.To))
	}
	if strings.Join(states, ",") != "queued,sent,succeeded" {
		t.Errorf("history %v, want queued,sent,succeeded", states)
	}

	// A second command to the connected device goes straight through.
	cmd2, _, err := h.Commands.Send(ctx, command.SendRequest{Device: "pump-1", Name: "stop"})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got:
		if !strings.Contains(string(m.Payload()), cmd2.ID) {
			t.Fatalf("second command payload %s", m.Payload())
		}
	case <-time.After(roleWait):
		t.Fatal("the device did not get the second command")
	}
	dev.Publish("devices/pump-1/replies/"+cmd2.ID, 1, false, `{"status":"error","error":"busy"}`).WaitTimeout(roleWait)
	if c, err := h.Commands.Wait(wctx, cmd2.ID); err != nil || c.State != registry.CommandFailed {
		t.Fatalf("second command: %+v %v", c, err)
	}

	// Twin: desired state is published retained; reported state comes back.
	if _, err := h.Commands.SetDesired(ctx, "pump-1", []byte(`{"rate": 5}`)); err != nil {
		t.Fatal(err)
	}
	viewer := deviceClient(t, mq.URL, "pump-1-viewer", nil)
	desired := make(chan mqtt.Message, 1)
	viewer.Subscribe("devices/pump-1/twin/desired", 1, func(_ mqtt.Client, m mqtt.Message) { desired <- m }).WaitTimeout(roleWait)
	select {
	case m := <-desired:
		if !m.Retained() || !strings.Contains(string(m.Payload()), `"rate"`) {
			t.Fatalf("desired %s retained=%v", m.Payload(), m.Retained())
		}
	case <-time.After(roleWait):
		t.Fatal("desired state not retained at the broker")
	}
	if tok := dev.Publish("devices/pump-1/twin/reported", 1, false, `{"rate": 5}`); !tok.WaitTimeout(roleWait) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	testkit.Eventually(t, roleWait, func() bool {
		tw, err := h.Commands.Twin(ctx, "pump-1")
		return err == nil && strings.Contains(string(tw.Reported.Doc), `"rate"`)
	}, "the reported twin to be stored")
}

// deviceClient is a device on the external broker with a persistent
// session (clean session off), as fieldhub's devices connect.
func deviceClient(t *testing.T, url, id string, onMsg mqtt.MessageHandler) mqtt.Client {
	t.Helper()
	o := mqtt.NewClientOptions().AddBroker(url).SetClientID(id).SetCleanSession(false).SetAutoReconnect(false)
	if onMsg != nil {
		o.SetDefaultPublishHandler(onMsg)
	}
	c := mqtt.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(roleWait) || tok.Error() != nil {
		t.Fatalf("device %s connect: %v", id, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(50) })
	return c
}

// TestDashboardMounts: with the embedded store the dashboard role serves
// the Prometheus API under /prometheus behind the API token, and with
// auth_hook.secret the broker auth hook, which answers for the registry's
// devices.
func TestDashboardMounts(t *testing.T) {
	cfg := testConfig(t)
	cfg.AuthHook.Secret = "hook-secret-0123456789"
	h := startHub(t, cfg)
	tok := addDevice(t, h, "th-1", "")
	if out, err := mosquittoPub(t, h, "th-1", tok, "-q", "1", "-t", "devices/th-1/telemetry", "-m", `{"metrics": {"temperature": 21.5}}`); err != nil {
		t.Fatalf("mosquitto_pub: %v\n%s", err, out)
	}
	admin, err := os.ReadFile(filepath.Join(cfg.DataDir, AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + h.Addrs().HTTP
	// call sends a request with an optional bearer credential (an API token,
	// or the broker-auth secret) and returns the status and body.
	call := func(method, path, bearer, body string) (int, string) {
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	get := func(path, bearer string) (int, string) { return call(http.MethodGet, path, bearer, "") }
	q := "/prometheus/api/v1/query?query=" + `temperature%7Bdevice%3D%22th-1%22%7D`
	if st, _ := get(q, ""); st != http.StatusUnauthorized {
		t.Errorf("promapi without a token: %d", st)
	}
	if st, body := get(q, strings.TrimSpace(string(admin))); st != http.StatusOK || !strings.Contains(body, `"21.5"`) {
		t.Errorf("promapi with the admin token: %d %s", st, body)
	}

	post := func(secret, body string) (int, string) {
		return call(http.MethodPost, "/broker-auth/emqx/authn", secret, body)
	}
	creds := `{"clientid":"th-1","username":"th-1","password":"` + tok + `"}`
	if st, _ := post("", creds); st != http.StatusUnauthorized {
		t.Errorf("auth hook without the secret: %d", st)
	}
	if st, body := post(cfg.AuthHook.Secret, creds); st != http.StatusOK || !strings.Contains(body, `"allow"`) {
		t.Errorf("auth hook: %d %s", st, body)
	}
	// The API token is not the hook's secret.
	if st, _ := post(strings.TrimSpace(string(admin)), creds); st != http.StatusUnauthorized {
		t.Errorf("auth hook with an API token: %d", st)
	}
}

// TestWorkerOpsEndpoints: a process without the dashboard role serves only
// /healthz, /readyz and /metrics (behind its API token).
func TestWorkerOpsEndpoints(t *testing.T) {
	mq := mosquittotest.Start(t, mosquittotest.Options{})
	cfg := testConfig(t)
	cfg.Roles = []string{config.RoleIngest}
	cfg.MQTT.URL = mq.URL
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	h := startHub(t, cfg)
	base := "http://" + h.Addrs().HTTP
	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200, "/metrics": 401, "/api/v1/devices": 404} {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("%s: %d, want %d", path, resp.StatusCode, want)
		}
	}
	if h.Addrs().MQTT != "" {
		t.Errorf("an ingest worker must not listen for MQTT: %q", h.Addrs().MQTT)
	}
}
