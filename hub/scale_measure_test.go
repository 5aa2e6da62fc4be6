package hub

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/devicesim"
	"github.com/fieldhub/fieldhub/internal/testkit"
	"github.com/fieldhub/fieldhub/internal/testkit/hubproc"
	"github.com/fieldhub/fieldhub/internal/testkit/influxdtest"
	"github.com/fieldhub/fieldhub/internal/testkit/mosquittotest"
	"github.com/fieldhub/fieldhub/registry"
)

// TestMeasureScaleOut measures readings stored per second (each reading 10
// metrics, QoS 1, from devicesim's closed-loop load with 1,000 devices, into
// one influxd) for: the embedded single process (PUBACK = stored), and one
// and two `--roles ingest` workers behind Mosquitto (Mosquitto acknowledges
// at once; the rate counts readings the workers acknowledged, that is
// stored, from the first publish until the backlog is drained). It prints a
// Markdown table for docs/deploy.md. Everything shares this machine's
// cores. Run it with FIELDHUB_BENCH=1 (it takes minutes); it makes no
// assertion about speed.
func TestMeasureScaleOut(t *testing.T) {
	if os.Getenv("FIELDHUB_BENCH") != "1" {
		t.Skip("measurement: FIELDHUB_BENCH=1 go test -run TestMeasureScaleOut -v ./hub")
	}
	dur := 20 * time.Second
	if d, err := time.ParseDuration(os.Getenv("FIELDHUB_BENCH_DURATION")); err == nil {
		dur = d
	}
	fieldhub := hubproc.Build(t)
	devsim := filepath.Join(t.TempDir(), "devicesim")
	cmd := exec.Command("go", "build", "-o", devsim, "./cmd/devicesim")
	cmd.Dir = testkit.RepoRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build devicesim: %v\n%s", err, out)
	}
	const devices = 1000
	rows := []string{measureEmbedded(t, fieldhub, devsim, devices, dur)}
	for _, inflight := range []int{20, 1000} {
		for _, workers := range []int{1, 2} {
			rows = append(rows, measureWorkers(t, fieldhub, devsim, devices, dur, workers, inflight))
		}
	}
	fmt.Println("\n| setup | readings/s stored | samples/s | readings | seconds (first publish → all stored) |")
	fmt.Println("|---|---|---|---|---|")
	for _, r := range rows {
		fmt.Println(r)
	}
}

func runLoad(t *testing.T, devsim string, args ...string) (devicesim.LoadReport, time.Time) {
	t.Helper()
	start := time.Now()
	out, err := exec.Command(devsim, append([]string{"load", "--qos", "1", "--metrics", "10", "--closed-loop", "--json", "--progress=false"}, args...)...).Output()
	if err != nil {
		t.Fatalf("devicesim load: %v\n%s", err, out)
	}
	var rep devicesim.LoadReport
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("report: %v\n%s", err, out)
	}
	return rep, start.Add(time.Duration(rep.ConnectSeconds * float64(time.Second)))
}

func measureEmbedded(t *testing.T, fieldhub, devsim string, devices int, dur time.Duration) string {
	ix := influxdtest.Start(t)
	dir := t.TempDir()
	ctx := context.Background()
	reg, err := registry.Open(ctx, filepath.Join(dir, "data", "registry.db"), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	creds := make([]devicesim.Credential, devices)
	for i := range creds {
		id := fmt.Sprintf("bench-%05d", i)
		_, tok, err := reg.CreateDevice(ctx, registry.DeviceSpec{ID: id})
		if err != nil {
			t.Fatal(err)
		}
		creds[i] = devicesim.Credential{ID: id, Token: tok}
	}
	reg.Close()
	credFile := filepath.Join(dir, "creds.csv")
	if err := devicesim.WriteCredentials(credFile, creds); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`data_dir: %q
log: {level: warn}
http: {addr: "127.0.0.1:0"}
mqtt: {addr: "127.0.0.1:0", ws_addr: "", max_clients: 100000}
store:
  backend: influx
  influx: {url: %s, token: %q, org: %q, bucket: %q}
`, filepath.Join(dir, "data"), ix.URL, ix.Token, ix.Org, ix.Bucket)
	confPath := filepath.Join(dir, "fieldhub.yaml")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	hub := exec.Command(fieldhub, "serve", "--config", confPath)
	hub.Env = cleanFieldhubEnv()
	hub.Stderr = os.Stderr
	if err := hub.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = hub.Process.Signal(os.Interrupt); _ = hub.Wait() }()
	var addrs Addrs
	testkit.Eventually(t, roleWait, func() bool {
		addrs, err = ReadRunFile(filepath.Join(dir, "data"))
		return err == nil
	}, "the hub to start")
	rep, start := runLoad(t, devsim, "--broker", "tcp://"+addrs.MQTT, "--credentials", credFile, "--devices", strconv.Itoa(devices), "--duration", dur.String())
	secs := time.Since(start).Seconds()
	t.Logf("embedded: %+v", rep)
	return fmt.Sprintf("| embedded broker, one process | %.0f | %.0f | %d | %.1f |", rep.MsgsPerSec, rep.MsgsPerSec*10, rep.Acked, secs)
}

func measureWorkers(t *testing.T, fieldhub, devsim string, devices int, dur time.Duration, n, inflight int) string {
	mq := mosquittotest.Start(t, mosquittotest.Options{Extra: fmt.Sprintf("max_inflight_messages %d\nmax_connections -1\n", inflight)})
	ix := influxdtest.Start(t)
	ws := make([]*workerProc, n)
	for i := range ws {
		name := fmt.Sprintf("worker-%d", i)
		ws[i] = startWorker(t, fieldhub, name, strings.Replace(workerYAML(mq.URL, name, ix), "level: info", "level: warn", 1))
	}
	rep, start := runLoad(t, devsim, "--broker", mq.URL, "--anonymous", "--devices", strconv.Itoa(devices), "--duration", dur.String())
	acked := func() float64 {
		var sum float64
		for _, w := range ws {
			sum += w.metric("fieldhub_extmqtt_messages_total", `result="acked"`)
		}
		return sum
	}
	backlogAt := time.Now()
	backlog := float64(rep.Acked) - acked()
	var done time.Time
	testkit.Eventually(t, 10*time.Minute, func() bool {
		if acked() >= float64(rep.Acked) {
			done = time.Now()
			return true
		}
		return false
	}, "the workers to store every reading Mosquitto accepted")
	secs := done.Sub(start).Seconds()
	rate := float64(rep.Acked) / secs
	drain := ""
	if backlog > 0 && done.Sub(backlogAt) > 0 {
		drain = fmt.Sprintf("; backlog of %.0f drained at %.0f/s after the load ended", backlog, backlog/done.Sub(backlogAt).Seconds())
	}
	t.Logf("%d workers, max_inflight_messages %d: mosquitto accepted %.0f/s; %d readings stored in %.1fs%s", n, inflight, rep.MsgsPerSec, rep.Acked, secs, drain)
	for _, w := range ws {
		w.stop()
	}
	return fmt.Sprintf("| %d ingest worker(s) behind Mosquitto (max_inflight_messages %d)%s | %.0f | %.0f | %d | %.1f |", n, inflight, drain, rate, rate*10, rep.Acked, secs)
}
