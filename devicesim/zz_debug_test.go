package devicesim

import (
	"testing"
	"time"
)

func TestZZDebugStorm(t *testing.T) {
	mq := startMosquitto(t)
	p := testProfile(t, `
seed: 3
interval: 20ms
backoff: {min: 20ms, max: 100ms, jitter: 0.5}
storm: {every: 300ms, pct: 50}
devices:
  - type: sensor
    count: 4
    metrics:
      t: {model: random_walk, step: 1, min: 0, max: 10}
`)
	f := startFleet(t, FleetConfig{Profile: p, Broker: mq.url(), Anonymous: true, Logger: testLogger(t)})
	for range 5 {
		time.Sleep(time.Second)
		for _, d := range f.Devices() {
			t.Logf("%s %+v", d.ID(), d.Stats())
		}
	}
}
