package telemetry

import (
	"math"
	"time"
)

// bucketBounds are the upper bounds (seconds) of the latency histogram
// kept per service: a 1-2-5 series from 0.5 ms to 60 s, then +Inf. Fine
// enough for p50/p95/p99 within one bucket's spread, small enough (17
// counters) to keep one per 10-second slot.
var bucketBounds = []float64{
	0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5,
	1, 2, 5, 10, 20, 60, math.Inf(1),
}

const nBuckets = 17

// bucketOf returns the index of the first bucket whose bound holds d.
func bucketOf(d time.Duration) int {
	s := d.Seconds()
	for i, b := range bucketBounds {
		if s <= b {
			return i
		}
	}
	return nBuckets - 1
}

// quantile estimates the q-quantile (0 < q < 1) of a histogram by linear
// interpolation inside the bucket that holds it, as Prometheus's
// histogram_quantile does; the open last bucket answers its lower bound.
// It returns 0 for an empty histogram.
func quantile(q float64, counts *[nBuckets]uint64) time.Duration {
	var total uint64
	for _, c := range counts {
		total += c
	}
	if total == 0 {
		return 0
	}
	rank := q * float64(total)
	var cum uint64
	for i, c := range counts {
		if c == 0 || float64(cum+c) < rank {
			cum += c
			continue
		}
		lower := 0.0
		if i > 0 {
			lower = bucketBounds[i-1]
		}
		upper := bucketBounds[i]
		if math.IsInf(upper, 1) {
			return seconds(lower)
		}
		frac := (rank - float64(cum)) / float64(c)
		return seconds(lower + (upper-lower)*frac)
	}
	return seconds(bucketBounds[nBuckets-2])
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
