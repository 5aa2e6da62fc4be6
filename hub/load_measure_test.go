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
	"syscall"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/devicesim"
	"github.com/fieldhub/fieldhub/internal/testkit"
	"github.com/fieldhub/fieldhub/internal/testkit/hubproc"
	"github.com/fieldhub/fieldhub/internal/testkit/influxdtest"
	"github.com/fieldhub/fieldhub/registry"
)

// The end-to-end load measurements: devicesim's load mode, in its own
// process, against `fieldhub serve` in another. They take minutes and want
// the machine to themselves, so they run only with FIELDHUB_BENCH=1
// (`make bench`); they print Markdown tables for docs/benchmarks.md and
// docs/deploy.md and assert nothing about speed.

// measureSetup skips unless FIELDHUB_BENCH=1 and returns the load duration
// (FIELDHUB_BENCH_DURATION, default 20s) and the two binaries.
func measureSetup(t *testing.T, what string) (dur time.Duration, fieldhub, devsim string) {
	t.Helper()
	if os.Getenv("FIELDHUB_BENCH") != "1" {
		t.Skipf("measurement: FIELDHUB_BENCH=1 go test -run %s -v ./hub (make bench)", what)
	}
	dur = 20 * time.Second
	if d, err := time.ParseDuration(os.Getenv("FIELDHUB_BENCH_DURATION")); err == nil {
		dur = d
	}
	devsim = filepath.Join(t.TempDir(), "devicesim")
	cmd := exec.Command("go", "build", "-o", devsim, "./cmd/devicesim")
	cmd.Dir = testkit.RepoRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build devicesim: %v\n%s", err, out)
	}
	return dur, hubproc.Build(t), devsim
}

// benchCredentials adds n devices to the registry in dataDir and writes
// their credentials file for devicesim.
func benchCredentials(t *testing.T, dataDir string, n int) string {
	t.Helper()
	ctx := context.Background()
	reg, err := registry.Open(ctx, filepath.Join(dataDir, "registry.db"), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	creds := make([]devicesim.Credential, n)
	for i := range creds {
		id := fmt.Sprintf("bench-%05d", i)
		_, tok, err := reg.CreateDevice(ctx, registry.DeviceSpec{ID: id})
		if err != nil {
			t.Fatal(err)
		}
		creds[i] = devicesim.Credential{ID: id, Token: tok}
	}
	path := filepath.Join(dataDir, "creds.csv")
	if err := devicesim.WriteCredentials(path, creds); err != nil {
		t.Fatal(err)
	}
	return path
}

// runLoad runs `devicesim load` (QoS 1, 10 metrics a reading) and returns
// its report and when publishing started (after the devices connected).
func runLoad(t *testing.T, devsim string, args ...string) (devicesim.LoadReport, time.Time) {
	t.Helper()
	start := time.Now()
	out, err := exec.Command(devsim, append([]string{"load", "--qos", "1", "--metrics", "10", "--json", "--progress=false"}, args...)...).Output()
	if err != nil {
		t.Fatalf("devicesim load: %v\n%s", err, out)
	}
	var rep devicesim.LoadReport
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("report: %v\n%s", err, out)
	}
	return rep, start.Add(time.Duration(rep.ConnectSeconds * float64(time.Second)))
}

// hubLoad is one measured run against the embedded broker.
type hubLoad struct {
	rep   devicesim.LoadReport
	cores float64 // the hub's CPU over the run
	rssKB int64   // the hub's peak resident memory
}

// measureHub starts `fieldhub serve` (embedded broker) with the given store
// flags and devices, runs devicesim load against it, and samples the hub's
// CPU and memory from /proc while it runs. The hub writes a CPU profile to
// the system temp dir (named in the log), for `go tool pprof`.
func measureHub(t *testing.T, devsim, name string, devices int, storeArgs []string, loadArgs ...string) hubLoad {
	t.Helper()
	dataDir := t.TempDir()
	creds := benchCredentials(t, dataDir, devices)
	profile := filepath.Join(os.TempDir(), "fieldhub-"+name+".pprof")
	p := hubproc.Start(t, dataDir, append([]string{"--log-level", "warn", "--mqtt-max-clients", "100000", "--cpuprofile", profile}, storeArgs...)...)
	pid := p.PID()

	peak := make(chan int64, 1)
	stop := make(chan struct{})
	go func() {
		var max int64
		for {
			select {
			case <-stop:
				peak <- max
				return
			case <-time.After(200 * time.Millisecond):
				max = maxInt(max, procStatusKB(pid, "VmRSS:"))
			}
		}
	}()
	cpu0, t0 := procCPUSeconds(t, pid), time.Now()
	rep, _ := runLoad(t, devsim, append([]string{"--broker", "tcp://" + p.Addrs().MQTT, "--credentials", creds,
		"--devices", strconv.Itoa(devices)}, loadArgs...)...)
	cores := (procCPUSeconds(t, pid) - cpu0) / time.Since(t0).Seconds()
	close(stop)
	rss := <-peak
	p.Signal(syscall.SIGINT) // an orderly stop writes the CPU profile
	p.Wait()
	t.Logf("%s: %+v; CPU profile %s", name, rep, profile)
	return hubLoad{rep: rep, cores: cores, rssKB: rss}
}

func maxInt(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}

// TestHubLoad is `make bench`'s end-to-end table: each store backend, closed
// loop (each device publishes as its PUBACKs return) and open loop at
// 10,000 readings/s, 1,000 devices.
func TestHubLoad(t *testing.T) {
	dur, _, devsim := measureSetup(t, "TestHubLoad")
	type scenario struct {
		name string
		args []string
	}
	scenarios := []scenario{
		{"closed loop, 1,000 devices", []string{"--closed-loop", "--duration", dur.String()}},
		{"open loop, 10,000 readings/s (1,000 devices × 10/s)", []string{"--rate", "10", "--duration", dur.String()}},
	}
	var rows []string
	for _, backend := range []string{"tsdb", "influx"} {
		var storeArgs []string
		if backend == "influx" {
			srv := influxdtest.Start(t)
			storeArgs = []string{"--store-backend", "influx", "--store-influx-url", srv.URL, "--store-influx-bucket", srv.Bucket,
				"--store-influx-org", srv.Org, "--store-influx-token", srv.Token}
		}
		for i, sc := range scenarios {
			m := measureHub(t, devsim, fmt.Sprintf("%s-%d", backend, i), 1000, storeArgs, sc.args...)
			rows = append(rows, fmt.Sprintf("| %s | %s | %.0f | %.0f | %.1f ms | %.1f ms | %.1f ms | %d | %.2f | %d MiB |",
				backend, sc.name, m.rep.MsgsPerSec, m.rep.MsgsPerSec*10, m.rep.Latency.P50, m.rep.Latency.P99, m.rep.Latency.P999,
				m.rep.ErrorCount(), m.cores, m.rssKB/1024))
		}
	}
	fmt.Println("\n| backend | scenario | readings/s stored | samples/s | PUBACK p50 | p99 | p99.9 | errors | hub CPU (cores) | hub RSS peak |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|")
	fmt.Println(strings.Join(rows, "\n"))
}

// procCPUSeconds is a process's user+system CPU time, from /proc.
func procCPUSeconds(t *testing.T, pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}

// procStatusKB reads one kB field (VmRSS:, VmHWM:) of /proc/PID/status.
func procStatusKB(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}
