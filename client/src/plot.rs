//! A small SVG line chart (no plotting dependency): latency percentiles against concurrency.

use std::fmt::Write;

/// One line of the chart.
pub struct Series<'a> {
    /// Legend.
    pub name: &'a str,
    /// Colour (SVG).
    pub colour: &'a str,
    /// `(x, y)` points, x in data units.
    pub points: Vec<(f64, f64)>,
}

/// An SVG chart of `series`, x on a log2 scale.
pub fn svg(title: &str, x_label: &str, y_label: &str, series: &[Series<'_>]) -> String {
    let (w, h, left, right, top, bottom) = (640.0, 400.0, 70.0, 20.0, 40.0, 50.0);
    let all = || series.iter().flat_map(|s| s.points.iter());
    let x_max = all()
        .map(|p| p.0.max(1.0).log2())
        .fold(0.0, f64::max)
        .max(1.0);
    let y_max = all().map(|p| p.1).fold(0.0, f64::max).max(1e-9) * 1.1;
    let px = |x: f64| left + (x.max(1.0).log2() / x_max) * (w - left - right);
    let py = |y: f64| h - bottom - (y / y_max) * (h - top - bottom);
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="20" text-anchor="middle" font-size="14">{title}</text>
<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/>
<line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="black"/>
<text x="{}" y="{}" text-anchor="middle">{x_label}</text>
<text x="15" y="{}" text-anchor="middle" transform="rotate(-90 15 {})">{y_label}</text>
"##,
        w / 2.0,
        h - bottom,
        w - right,
        h - bottom,
        h - bottom,
        w / 2.0,
        h - 10.0,
        h / 2.0,
        h / 2.0,
    );
    for i in 0..=4 {
        let y = y_max * f64::from(i) / 4.0;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{y:.1}</text>"#,
            left - 5.0,
            py(y) + 4.0
        );
    }
    let mut xs: Vec<f64> = all().map(|p| p.0).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    for x in xs {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{x}</text>"#,
            px(x),
            h - bottom + 15.0
        );
    }
    for (i, ser) in series.iter().enumerate() {
        let pts: Vec<String> = ser
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            ser.colour,
            pts.join(" ")
        );
        let ly = top + 15.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{ly}" fill="{}">{}</text>"#,
            left + 10.0,
            ser.colour,
            ser.name
        );
    }
    s.push_str("</svg>\n");
    s
}
