package main

import (
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// plotLatency draws p50 and p99 against offered rate for every curve (log
// latency axis), which makes each knee visible. With no curve (nothing was
// measured) it draws nothing.
func plotLatency(r *Report, path string) error {
	p := plot.New()
	p.Title.Text = "latency against offered rate (open loop)"
	p.X.Label.Text = "offered rate (req/s)"
	p.Y.Label.Text = "latency (ms, log)"
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	curves := append([]Curve{}, r.Passthrough...)
	for _, b := range r.Backends {
		curves = append(curves, b.Intake)
	}
	var lines []any
	top := 1.0
	for _, c := range curves {
		if len(c.Points) == 0 {
			continue
		}
		p50, p99 := plotter.XYs{}, plotter.XYs{}
		for _, pt := range c.Points {
			p50 = append(p50, plotter.XY{X: pt.Offered, Y: max(pt.P50ms, 0.01)})
			p99 = append(p99, plotter.XY{X: pt.Offered, Y: max(pt.P99ms, 0.01)})
			top = max(top, pt.P99ms)
		}
		lines = append(lines, c.Name+" p50", p50, c.Name+" p99", p99)
	}
	if len(lines) == 0 {
		return nil
	}
	if err := plotutil.AddLinePoints(p, lines...); err != nil {
		return err
	}
	// Room above the curves for the legend (the axis is logarithmic).
	p.Y.Max = top * 1000
	p.Legend.Top = true
	p.Legend.Left = true
	p.Legend.TextStyle.Font.Size = vg.Points(8)
	return p.Save(10*vg.Inch, 6*vg.Inch, path)
}
