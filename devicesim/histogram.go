package devicesim

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// Histogram is a log-linear latency histogram in the manner of HDR
// Histogram: values below 128 ns are exact, above that each power of two
// is split into 64 linear sub-buckets, so any recorded value is reported
// within 1/64 (1.6%) of itself, from nanoseconds to hours, in a fixed
// 30 KB of counters. Record is lock-free and safe for concurrent use.
type Histogram struct {
	counts [histBuckets]atomic.Uint64
	total  atomic.Uint64
	sum    atomic.Uint64 // ns
	max    atomic.Uint64 // ns
}

const (
	histSubBits = 7
	histSub     = 1 << histSubBits // 128 exact values, then 64 per octave
	histHalf    = histSub / 2
	histBuckets = histSub + (64-histSubBits)*histHalf
)

func histIndex(v uint64) int {
	if v < histSub {
		return int(v)
	}
	shift := bits.Len64(v) - histSubBits
	top := v >> shift // in [64, 128)
	return histSub + (shift-1)*histHalf + int(top-histHalf)
}

// histHigh is the largest value that falls in bucket i.
func histHigh(i int) uint64 {
	if i < histSub {
		return uint64(i)
	}
	shift := (i-histSub)/histHalf + 1
	top := uint64((i-histSub)%histHalf + histHalf)
	return (top+1)<<shift - 1
}

// Record adds one duration (negative ones count as zero).
func (h *Histogram) Record(d time.Duration) {
	v := uint64(max(d, 0))
	h.counts[histIndex(v)].Add(1)
	h.total.Add(1)
	h.sum.Add(v)
	for {
		m := h.max.Load()
		if v <= m || h.max.CompareAndSwap(m, v) {
			break
		}
	}
}

// Count is the number of recorded values.
func (h *Histogram) Count() uint64 { return h.total.Load() }

// Max is the largest recorded value, exactly.
func (h *Histogram) Max() time.Duration { return time.Duration(h.max.Load()) }

// Mean is the average recorded value.
func (h *Histogram) Mean() time.Duration {
	n := h.total.Load()
	if n == 0 {
		return 0
	}
	return time.Duration(h.sum.Load() / n)
}

// Quantile returns the value below or at which the fraction q (0..1) of
// the recorded values fall, as the highest value of its bucket (like
// HdrHistogram's ValueAtQuantile), never above Max.
func (h *Histogram) Quantile(q float64) time.Duration {
	n := h.total.Load()
	if n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(n)))
	rank = max(rank, 1)
	var seen uint64
	for i := range h.counts {
		seen += h.counts[i].Load()
		if seen >= rank {
			return min(time.Duration(histHigh(i)), h.Max())
		}
	}
	return h.Max()
}
