package hub

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/internal/testkit"
	"github.com/fieldhub/fieldhub/internal/testkit/influxdtest"
	"github.com/fieldhub/fieldhub/internal/testkit/mosquittotest"
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
	dur, _, devsim := measureSetup(t, "TestMeasureScaleOut")
	const devices = 1000
	ix := influxdtest.Start(t)
	m := measureHub(t, devsim, "scaleout-embedded", devices, []string{"--store-backend", "influx", "--store-influx-url", ix.URL,
		"--store-influx-bucket", ix.Bucket, "--store-influx-org", ix.Org, "--store-influx-token", ix.Token},
		"--closed-loop", "--duration", dur.String())
	rows := []string{fmt.Sprintf("| embedded broker, one process | %.0f | %.0f | %d | %.1f |",
		m.rep.MsgsPerSec, m.rep.MsgsPerSec*10, m.rep.Acked, m.rep.Seconds)}
	for _, inflight := range []int{20, 1000} {
		for _, workers := range []int{1, 2} {
			rows = append(rows, measureWorkers(t, devsim, devices, dur, workers, inflight))
		}
	}
	fmt.Println("\n| setup | readings/s stored | samples/s | readings | seconds (first publish → all stored) |")
	fmt.Println("|---|---|---|---|---|")
	for _, r := range rows {
		fmt.Println(r)
	}
}

func measureWorkers(t *testing.T, devsim string, devices int, dur time.Duration, n, inflight int) string {
	mq := mosquittotest.Start(t, mosquittotest.Options{Extra: fmt.Sprintf("max_inflight_messages %d\nmax_connections -1\n", inflight)})
	ix := influxdtest.Start(t)
	ws := make([]*workerProc, n)
	for i := range ws {
		name := fmt.Sprintf("worker-%d", i)
		ws[i] = startWorker(t, name, strings.Replace(workerYAML(mq.URL, name, ix), "level: info", "level: warn", 1))
	}
	rep, start := runLoad(t, devsim, "--broker", mq.URL, "--anonymous", "--closed-loop", "--devices", strconv.Itoa(devices), "--duration", dur.String())
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
