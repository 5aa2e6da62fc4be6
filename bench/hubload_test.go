// Package bench holds fieldhub's end-to-end load benchmark: devicesim's load
// mode, in its own process, against `fieldhub serve` in another, with each
// store backend. Run it with `make bench` (it is skipped otherwise: it takes
// minutes and wants the machine to itself). Results go to stdout as a
// Markdown table for docs/benchmarks.md.
package bench

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
	"github.com/fieldhub/fieldhub/hub"
	"github.com/fieldhub/fieldhub/internal/testkit"
	"github.com/fieldhub/fieldhub/internal/testkit/influxdtest"
	"github.com/fieldhub/fieldhub/registry"
)

type scenario struct {
	name    string
	devices int
	closed  bool
	rate    float64 // per device, open loop
	dur     time.Duration
}

func TestHubLoad(t *testing.T) {
	if os.Getenv("FIELDHUB_BENCH") != "1" {
		t.Skip("end-to-end load benchmark: run `make bench` (FIELDHUB_BENCH=1)")
	}
	dur := 20 * time.Second
	if d, err := time.ParseDuration(os.Getenv("FIELDHUB_BENCH_DURATION")); err == nil {
		dur = d
	}
	bins := build(t)
	scenarios := []scenario{
		{"closed loop, 1,000 devices", 1000, true, 0, dur},
		{"open loop, 10,000 readings/s (1,000 devices × 10/s)", 1000, false, 10, dur},
	}
	var rows []string
	for _, backend := range []string{"tsdb", "influx"} {
		for _, sc := range scenarios {
			rows = append(rows, runScenario(t, bins, backend, sc))
		}
	}
	fmt.Println("\n| backend | scenario | readings/s stored | samples/s | PUBACK p50 | p99 | p99.9 | errors | hub CPU (cores) | hub RSS peak |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|")
	for _, r := range rows {
		fmt.Println(r)
	}
}

type binaries struct{ fieldhub, devicesim string }

func build(t *testing.T) binaries {
	dir := t.TempDir()
	b := binaries{filepath.Join(dir, "fieldhub"), filepath.Join(dir, "devicesim")}
	for path, pkg := range map[string]string{b.fieldhub: "../cmd/fieldhub", b.devicesim: "../cmd/devicesim"} {
		if out, err := exec.Command("go", "build", "-o", path, pkg).CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", pkg, err, out)
		}
	}
	return b
}

func runScenario(t *testing.T, bins binaries, backend string, sc scenario) string {
	dataDir := t.TempDir()
	args := []string{"serve", "--data-dir", dataDir, "--mqtt-addr", "127.0.0.1:0", "--mqtt-ws-addr", "",
		"--http-addr", "127.0.0.1:0", "--log-level", "warn", "--mqtt-max-clients", "100000",
		"--cpuprofile", filepath.Join(os.TempDir(), fmt.Sprintf("fieldhub-%s-%v.pprof", backend, sc.closed))}
	if backend == "influx" {
		srv := influxdtest.Start(t)
		args = append(args, "--store-backend", "influx", "--store-influx-url", srv.URL, "--store-influx-bucket", srv.Bucket,
			"--store-influx-org", srv.Org, "--store-influx-token", srv.Token)
	}

	// Devices and their credentials, straight into the registry.
	ctx := context.Background()
	reg, err := registry.Open(ctx, filepath.Join(dataDir, "registry.db"), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	creds := make([]devicesim.Credential, sc.devices)
	for i := range creds {
		id := fmt.Sprintf("bench-%05d", i)
		_, tok, err := reg.CreateDevice(ctx, registry.DeviceSpec{ID: id})
		if err != nil {
			t.Fatal(err)
		}
		creds[i] = devicesim.Credential{ID: id, Token: tok}
	}
	reg.Close()
	credFile := filepath.Join(dataDir, "creds.csv")
	if err := devicesim.WriteCredentials(credFile, creds); err != nil {
		t.Fatal(err)
	}

	hubCmd := exec.Command(bins.fieldhub, args...)
	hubCmd.Stderr = os.Stderr
	if err := hubCmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		hubCmd.Process.Signal(os.Interrupt)
		hubCmd.Wait()
	}()
	var addrs hub.Addrs
	testkit.Eventually(t, 60*time.Second, func() bool {
		addrs, err = hub.ReadRunFile(dataDir)
		return err == nil
	}, "the hub to start")

	load := []string{"load", "--broker", "tcp://" + addrs.MQTT, "--credentials", credFile, "--devices", strconv.Itoa(sc.devices),
		"--qos", "1", "--metrics", "10", "--duration", sc.dur.String(), "--json", "--progress=false"}
	if sc.closed {
		load = append(load, "--closed-loop")
	} else {
		load = append(load, "--rate", fmt.Sprint(sc.rate))
	}
	cpu0 := cpuSeconds(t, hubCmd.Process.Pid)
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
				if r := rssKB(hubCmd.Process.Pid); r > max {
					max = r
				}
			}
		}
	}()
	start := time.Now()
	out, err := exec.Command(bins.devicesim, load...).Output()
	wall := time.Since(start)
	close(stop)
	rss := <-peak
	cpu := cpuSeconds(t, hubCmd.Process.Pid) - cpu0
	if err != nil {
		t.Fatalf("devicesim load: %v\n%s", err, out)
	}
	var rep devicesim.LoadReport
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("report: %v\n%s", err, out)
	}
	t.Logf("%s %s: %s", backend, sc.name, out)
	return fmt.Sprintf("| %s | %s | %.0f | %.0f | %.1f ms | %.1f ms | %.1f ms | %d | %.2f | %d MiB |",
		backend, sc.name, rep.MsgsPerSec, rep.MsgsPerSec*10, rep.Latency.P50, rep.Latency.P99, rep.Latency.P999,
		rep.ErrorCount(), cpu/wall.Seconds(), rss/1024)
}

// cpuSeconds is a process's user+system CPU time from /proc.
func cpuSeconds(t *testing.T, pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}

func rssKB(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}
