package devicesim

import (
	"context"
	"fmt"
	"time"
)

// RunConfig is a profile run: a fleet for a while, then its expectations.
type RunConfig struct {
	Fleet    FleetConfig
	Duration time.Duration
	// Expect overrides the profile's expectations when not nil.
	Expect []Expectation
	// Hub answers the stored and rejected expectations.
	Hub Hub
	// Settle is how long, after Duration, the run keeps polling the
	// expectations (the devices stay connected but take no readings) before
	// it gives up. Default 15s.
	Settle time.Duration
	// Progress, if set, is called every second with the fleet's counters.
	Progress func(elapsed time.Duration, s Stats)
}

// RunResult is what a run did and whether its expectations held.
type RunResult struct {
	Start, End time.Time
	Stats      Stats
	Outcomes   []Outcome
	Passed     bool
}

// Run starts a fleet, lets it run for Duration (or until ctx is done),
// stops its readings, polls the expectations until they hold or Settle
// passes, and stops the fleet. The error is for runs that could not be
// carried out; failed expectations are in the result.
func Run(ctx context.Context, cfg RunConfig) (RunResult, error) {
	exps := cfg.Expect
	if exps == nil {
		var err error
		if exps, err = ParseExpectations(cfg.Fleet.Profile.Expect); err != nil {
			return RunResult{}, err
		}
	}
	if cfg.Settle <= 0 {
		cfg.Settle = 15 * time.Second
	}
	f, err := NewFleet(cfg.Fleet)
	if err != nil {
		return RunResult{}, err
	}
	now := f.cfg.Now
	res := RunResult{Start: now()}
	if err := f.Start(ctx); err != nil {
		return res, err
	}
	defer f.Stop()

	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	end := time.NewTimer(cfg.Duration)
	defer end.Stop()
wait:
	for {
		select {
		case <-ctx.Done():
			break wait
		case <-end.C:
			break wait
		case <-tick.C:
			if cfg.Progress != nil {
				cfg.Progress(now().Sub(res.Start), f.Stats())
			}
		}
	}
	// Keep connections up for rejections, replies and flushes, but stop
	// new readings so the counts settle.
	qctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	f.Quiesce(qctx)
	cancel()
	res.End = now()

	deadline := time.Now().Add(cfg.Settle)
	for {
		// A reading acknowledged now was taken before End.
		res.Outcomes = f.Check(context.WithoutCancel(ctx), exps, cfg.Hub, res.Start, res.End)
		res.Passed = allOK(res.Outcomes)
		if res.Passed || time.Now().After(deadline) || len(exps) == 0 {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	f.Stop()
	res.Stats = f.Stats()
	if len(exps) == 0 {
		res.Passed = true
	}
	return res, nil
}

func allOK(os []Outcome) bool {
	for _, o := range os {
		if !o.OK {
			return false
		}
	}
	return true
}

// Summary is a short human-readable account of a run.
func (r RunResult) Summary() string {
	s := r.Stats
	out := fmt.Sprintf("readings %d, messages %d published / %d delivered / %d failed, buffered %d (dropped %d), flushed %d in %d batches\n"+
		"connects %d (errors %d, lost %d), commands %d, replies %d (errors %d), twin reports %d, hub errors %d\n"+
		"faults: malformed %d, out_of_range %d, skewed %d, duplicates %d, storm drops %d, slow consumed %d\n",
		s.Readings, s.Published, s.Delivered, s.PublishErrors, s.Buffered, s.BufferDropped, s.Flushed, s.Batches,
		s.Connects, s.ConnectErrors, s.ConnectionsLost, s.CommandsReceived, s.Replies, s.ErrorReplies, s.TwinReports, s.HubErrors,
		s.Malformed, s.OutOfRange, s.Skewed, s.Duplicates, s.StormDrops, s.SlowConsumed)
	for _, o := range r.Outcomes {
		mark := "ok  "
		if !o.OK {
			mark = "FAIL"
		}
		line := fmt.Sprintf("%s %-16s want %d, got %d", mark, o.Expectation, o.Want, o.Got)
		if o.Error != "" {
			line += " (" + o.Error + ")"
		}
		out += line + "\n"
	}
	return out
}
