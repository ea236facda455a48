//! The model card's charts: the test split's confusion matrix and the per-epoch training curve as PNG
//! files (plotters drawing into an in-memory RGB buffer, encoded by [`png`]; text rasterised by the
//! pure-Rust `ab_glyph` from a TTF file), byte-identical for the same inputs and font.
//!
//! A missing or unreadable font never fails a training run: [`render_or_skip`] logs a warning and
//! returns [`Charts::Skipped`] with the reason, which the card records instead of the files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use sentiflow_model::eval::{CLASS_NAMES, Evaluation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub mod png;

/// File name of the confusion-matrix chart in a version directory.
pub const CONFUSION_MATRIX_FILE: &str = "confusion_matrix.png";
/// File name of the training-curve chart in a version directory.
pub const TRAINING_CURVE_FILE: &str = "training_curve.png";
/// The font used when [`FONT_ENV`] is not set (Debian's `fonts-dejavu-core`, installed by
/// `infra/setup.sh` and the container image).
pub const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
/// Environment variable naming another TTF/OTF font file for the charts.
pub const FONT_ENV: &str = "SENTIFLOW_CHART_FONT";

/// Size of the confusion-matrix chart in pixels.
pub const CONFUSION_SIZE: (u32, u32) = (760, 640);
/// Size of the training-curve chart in pixels.
pub const CURVE_SIZE: (u32, u32) = (900, 560);

/// Family name the font is registered under in plotters' `ab_glyph` font table: every text style
/// (captions, mesh labels, legends) that names it uses the loaded file.
const FAMILY: &str = "sans-serif";

/// One epoch of the training curve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CurvePoint {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss of the epoch.
    pub train_loss: f64,
    /// Validation macro-F1 after the epoch.
    pub validation_macro_f1: f64,
}

impl From<&sentiflow_model::train::EpochRecord> for CurvePoint {
    fn from(epoch: &sentiflow_model::train::EpochRecord) -> Self {
        Self {
            epoch: epoch.epoch,
            train_loss: epoch.train_loss,
            validation_macro_f1: epoch.validation_macro_f1,
        }
    }
}

impl From<&sentiflow_model::encoder::head::HeadEpoch> for CurvePoint {
    fn from(epoch: &sentiflow_model::encoder::head::HeadEpoch) -> Self {
        Self {
            epoch: epoch.epoch,
            train_loss: epoch.train_loss,
            validation_macro_f1: epoch.validation_macro_f1,
        }
    }
}

/// What the charts show.
#[derive(Debug, Clone)]
pub struct ChartInputs<'a> {
    /// Model name (titles).
    pub name: &'a str,
    /// Registry version (titles).
    pub version: &'a str,
    /// Test-split evaluation (the confusion matrix and the macro-F1 in the title).
    pub test: &'a Evaluation,
    /// Every epoch run, in order.
    pub history: Vec<CurvePoint>,
    /// 1-based epoch whose weights the model keeps.
    pub best_epoch: usize,
    /// Epochs the configuration planned (more than were run when early stopping ended the run).
    pub planned_epochs: usize,
    /// Early-stopping patience of the configuration (0: never stops early).
    pub patience: usize,
    /// First epoch that could be kept (`TrainConfig::min_epochs`; 1 for the families without one).
    pub min_epochs: usize,
}

/// One chart file as the card names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChartFile {
    /// File name, relative to the card.
    pub file: String,
    /// sha256 of the file's bytes.
    pub sha256: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// The card's record of its charts: the files, or why there are none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Charts {
    /// Both charts were written next to the card.
    Written {
        /// [`CONFUSION_MATRIX_FILE`].
        confusion_matrix: ChartFile,
        /// [`TRAINING_CURVE_FILE`].
        training_curve: ChartFile,
    },
    /// No charts: the reason (e.g. the font file is missing).
    Skipped(String),
}

/// Why the charts could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    /// The font file is missing, unreadable or not a font.
    #[error(
        "chart font {path}: {reason} (install fonts-dejavu-core, e.g. with infra/setup.sh, or set {FONT_ENV} to a TTF file)"
    )]
    Font {
        /// The font file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The inputs cannot be drawn (no epochs, a non-finite value).
    #[error("chart inputs: {0}")]
    Input(String),
    /// plotters failed.
    #[error("drawing {chart}: {reason}")]
    Draw {
        /// Which chart.
        chart: &'static str,
        /// plotters' error.
        reason: String,
    },
    /// PNG encoding failed.
    #[error("encoding {chart}: {reason}")]
    Encode {
        /// Which chart.
        chart: &'static str,
        /// The encoder's error.
        reason: String,
    },
}

/// The chart font: [`FONT_ENV`] when set and not empty, else [`DEFAULT_FONT`].
pub fn font_path() -> PathBuf {
    match std::env::var_os(FONT_ENV) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(DEFAULT_FONT),
    }
}

/// Fonts read so far, by path: plotters' `ab_glyph` table wants `'static` bytes, so each distinct
/// file is read and leaked once per process. The lock also serialises rendering, because the font
/// table is global and two renders with different fonts must not interleave.
static FONTS: Mutex<Option<HashMap<PathBuf, &'static [u8]>>> = Mutex::new(None);

/// Renders both charts, returning `(file name, PNG bytes)` pairs, or the first error.
pub fn render(inputs: &ChartInputs<'_>, font: &Path) -> Result<Vec<(String, Vec<u8>)>, ChartError> {
    validate(inputs)?;
    let mut fonts = FONTS.lock().unwrap_or_else(PoisonError::into_inner);
    let fonts = fonts.get_or_insert_with(HashMap::new);
    let bytes = match fonts.get(font) {
        Some(bytes) => *bytes,
        None => {
            let font_error = |reason: String| ChartError::Font {
                path: font.to_owned(),
                reason,
            };
            let bytes = std::fs::read(font).map_err(|error| font_error(error.to_string()))?;
            ab_glyph::FontRef::try_from_slice(&bytes)
                .map_err(|error| font_error(format!("not a TrueType/OpenType font ({error})")))?;
            // Leaked once per distinct path (the map keeps it), only after it proved to be a font.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            fonts.insert(font.to_owned(), bytes);
            bytes
        }
    };
    // Registered on every render: another path may have been registered since.
    plotters::style::register_font(FAMILY, FontStyle::Normal, bytes).map_err(|_| {
        ChartError::Font {
            path: font.to_owned(),
            reason: "not a TrueType/OpenType font".to_owned(),
        }
    })?;
    Ok(vec![
        (
            CONFUSION_MATRIX_FILE.to_owned(),
            draw_png("confusion matrix", CONFUSION_SIZE, |root| {
                draw_confusion(root, inputs)
            })?,
        ),
        (
            TRAINING_CURVE_FILE.to_owned(),
            draw_png("training curve", CURVE_SIZE, |root| {
                draw_curve(root, inputs)
            })?,
        ),
    ])
}

/// Renders both charts; on failure logs a warning and returns [`Charts::Skipped`] with the reason
/// and no files, so the card is still written (without a broken link).
pub fn render_or_skip(inputs: &ChartInputs<'_>, font: &Path) -> (Charts, Vec<(String, Vec<u8>)>) {
    match render(inputs, font) {
        Ok(files) => {
            let describe = |name: &str, (width, height): (u32, u32)| {
                let bytes = files
                    .iter()
                    .find(|(file, _)| file == name)
                    .map_or(&[][..], |(_, bytes)| bytes.as_slice());
                ChartFile {
                    file: name.to_owned(),
                    sha256: hex::encode(Sha256::digest(bytes)),
                    width,
                    height,
                }
            };
            let charts = Charts::Written {
                confusion_matrix: describe(CONFUSION_MATRIX_FILE, CONFUSION_SIZE),
                training_curve: describe(TRAINING_CURVE_FILE, CURVE_SIZE),
            };
            (charts, files)
        }
        Err(error) => {
            tracing::warn!(model = inputs.name, version = inputs.version, %error, "model card charts skipped");
            (Charts::Skipped(error.to_string()), Vec::new())
        }
    }
}

fn validate(inputs: &ChartInputs<'_>) -> Result<(), ChartError> {
    if inputs.history.is_empty() {
        return Err(ChartError::Input("no epochs in the history".to_owned()));
    }
    for point in &inputs.history {
        if !(point.train_loss.is_finite() && point.validation_macro_f1.is_finite()) {
            return Err(ChartError::Input(format!(
                "epoch {}: non-finite loss {} or macro-F1 {}",
                point.epoch, point.train_loss, point.validation_macro_f1
            )));
        }
    }
    if !inputs.test.macro_f1.is_finite() {
        return Err(ChartError::Input("non-finite test macro-F1".to_owned()));
    }
    Ok(())
}

type Root<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn draw_png(
    chart: &'static str,
    (width, height): (u32, u32),
    draw: impl FnOnce(&Root<'_>) -> DrawResult,
) -> Result<Vec<u8>, ChartError> {
    let mut rgb = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        let drawn = draw(&root).and_then(|()| root.present().map_err(Into::into));
        drawn.map_err(|error| ChartError::Draw {
            chart,
            reason: error.to_string(),
        })?;
    }
    png::encode_rgb(width, height, &rgb).map_err(|error| ChartError::Encode {
        chart,
        reason: error.to_string(),
    })
}

const INK: RGBColor = RGBColor(33, 37, 41);
const MUTED: RGBColor = RGBColor(90, 96, 104);
const LOSS: RGBColor = RGBColor(214, 96, 77);
const F1: RGBColor = RGBColor(33, 102, 172);
const BEST: RGBColor = RGBColor(27, 120, 55);

/// Five stops of matplotlib's "Blues" (white → dark blue), at shares 0, ¼, ½, ¾, 1.
const BLUES: [(u8, u8, u8); 5] = [
    (247, 251, 255),
    (198, 219, 239),
    (107, 174, 214),
    (33, 113, 181),
    (8, 48, 107),
];

/// The "Blues" colour of `share` in [0, 1], linear between the stops.
fn blues(share: f64) -> RGBColor {
    let position = share.clamp(0.0, 1.0) * (BLUES.len() - 1) as f64;
    let index = (position.floor() as usize).min(BLUES.len() - 2);
    let fraction = position - index as f64;
    let (from, to) = (BLUES[index], BLUES[index + 1]);
    let mix = |from: u8, to: u8| {
        (f64::from(from) + (f64::from(to) - f64::from(from)) * fraction).round() as u8
    };
    RGBColor(mix(from.0, to.0), mix(from.1, to.1), mix(from.2, to.2))
}

fn text_style(size: f64, color: RGBColor, h: HPos, v: VPos) -> TextStyle<'static> {
    (FAMILY, size).into_font().color(&color).pos(Pos::new(h, v))
}

fn draw_confusion(root: &Root<'_>, inputs: &ChartInputs<'_>) -> DrawResult {
    let test = inputs.test;
    root.fill(&WHITE)?;
    let (width, _) = root.dim_in_pixel();
    let center = width as i32 / 2;
    root.draw(&Text::new(
        format!("{} {}: test confusion matrix", inputs.name, inputs.version),
        (center, 14),
        text_style(24.0, INK, HPos::Center, VPos::Top),
    ))?;
    root.draw(&Text::new(
        format!(
            "macro-F1 {:.4} · accuracy {:.4} · {} rows · cell: count (share of the true class)",
            test.macro_f1, test.accuracy, test.rows
        ),
        (center, 48),
        text_style(16.0, MUTED, HPos::Center, VPos::Top),
    ))?;

    let cell = 150;
    let (left, top) = (220, 96);
    for (truth, row) in test.confusion.iter().enumerate() {
        let support: usize = row.iter().sum();
        let y = top + truth as i32 * cell;
        for (predicted, &count) in row.iter().enumerate() {
            let share = if support == 0 {
                0.0
            } else {
                count as f64 / support as f64
            };
            let x = left + predicted as i32 * cell;
            root.draw(&Rectangle::new(
                [(x, y), (x + cell, y + cell)],
                blues(share).filled(),
            ))?;
            root.draw(&Rectangle::new(
                [(x, y), (x + cell, y + cell)],
                WHITE.stroke_width(2),
            ))?;
            let ink = if share > 0.6 { WHITE } else { INK };
            root.draw(&Text::new(
                count.to_string(),
                (x + cell / 2, y + cell / 2 - 4),
                text_style(30.0, ink, HPos::Center, VPos::Bottom),
            ))?;
            let share_text = if support == 0 {
                "(no rows)".to_owned()
            } else {
                format!("({:.1}%)", share * 100.0)
            };
            root.draw(&Text::new(
                share_text,
                (x + cell / 2, y + cell / 2 + 8),
                text_style(18.0, ink, HPos::Center, VPos::Top),
            ))?;
        }
        root.draw(&Text::new(
            CLASS_NAMES[truth].to_owned(),
            (left - 12, y + cell / 2 - 2),
            text_style(18.0, INK, HPos::Right, VPos::Bottom),
        ))?;
        root.draw(&Text::new(
            format!("{support} rows"),
            (left - 12, y + cell / 2 + 4),
            text_style(14.0, MUTED, HPos::Right, VPos::Top),
        ))?;
    }
    let bottom = top + 3 * cell;
    for (predicted, name) in CLASS_NAMES.iter().enumerate() {
        root.draw(&Text::new(
            (*name).to_owned(),
            (left + predicted as i32 * cell + cell / 2, bottom + 10),
            text_style(18.0, INK, HPos::Center, VPos::Top),
        ))?;
    }
    root.draw(&Text::new(
        "predicted class",
        (left + 3 * cell / 2, bottom + 42),
        text_style(18.0, MUTED, HPos::Center, VPos::Top),
    ))?;
    root.draw(&Text::new(
        "true class",
        (40, top + 3 * cell / 2),
        text_style(18.0, MUTED, HPos::Center, VPos::Center).transform(FontTransform::Rotate270),
    ))?;
    Ok(())
}

/// The note under the curve's title: where early stopping ended the run and which epoch was kept.
fn stopping_note(inputs: &ChartInputs<'_>) -> String {
    let ran = inputs.history.last().map_or(0, |point| point.epoch);
    let eligible = if inputs.min_epochs > 1 {
        format!(
            " (the best validation macro-F1 from epoch {} on)",
            inputs.min_epochs
        )
    } else {
        String::new()
    };
    if ran < inputs.planned_epochs {
        format!(
            "early stopping: no better validation macro-F1 for {} epochs, stopped after epoch {ran} of \
             {}; weights of epoch {} kept{eligible}",
            inputs.patience, inputs.planned_epochs, inputs.best_epoch
        )
    } else {
        format!(
            "all {ran} planned epochs ran; weights of epoch {} kept{eligible}",
            inputs.best_epoch
        )
    }
}

fn draw_curve(root: &Root<'_>, inputs: &ChartInputs<'_>) -> DrawResult {
    root.fill(&WHITE)?;
    let (width, _) = root.dim_in_pixel();
    let center = width as i32 / 2;
    root.draw(&Text::new(
        format!(
            "{} {}: training curve (test macro-F1 {:.4})",
            inputs.name, inputs.version, inputs.test.macro_f1
        ),
        (center, 14),
        text_style(24.0, INK, HPos::Center, VPos::Top),
    ))?;
    root.draw(&Text::new(
        stopping_note(inputs),
        (center, 48),
        text_style(15.0, MUTED, HPos::Center, VPos::Top),
    ))?;
    draw_legend(root, inputs.best_epoch, 84)?;
    let (_, body) = root.split_vertically(104);

    let history = &inputs.history;
    let last = history.last().map_or(1, |point| point.epoch).max(1);
    let x_range = 0.5..last as f64 + 0.5;
    let max_loss = history
        .iter()
        .map(|point| point.train_loss)
        .fold(0.0f64, f64::max);
    let loss_range = 0.0..if max_loss > 0.0 { max_loss * 1.15 } else { 1.0 };
    let (low, high) = history.iter().fold((1.0f64, 0.0f64), |(low, high), point| {
        (
            low.min(point.validation_macro_f1),
            high.max(point.validation_macro_f1),
        )
    });
    let pad = ((high - low) * 0.25).max(0.02);
    let f1_range = (low - pad).max(0.0)..(high + pad).min(1.0);

    let mut chart = ChartBuilder::on(&body)
        .margin_left(16)
        .margin_right(16)
        .margin_bottom(12)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .right_y_label_area_size(72)
        .build_cartesian_2d(x_range.clone(), loss_range.clone())?
        .set_secondary_coord(x_range, f1_range.clone());
    let label_style = (FAMILY, 15.0).into_font().color(&INK);
    let epochs = last;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .bold_line_style(RGBColor(226, 229, 232))
        .light_line_style(TRANSPARENT)
        .y_labels(6)
        .x_labels(epochs.min(12) + 1)
        .x_label_formatter(&|x| {
            if (x - x.round()).abs() < 1e-9 && *x >= 1.0 {
                format!("{x:.0}")
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| format!("{y:.2}"))
        .y_desc("training loss")
        .label_style(label_style.clone())
        .axis_desc_style((FAMILY, 17.0).into_font().color(&LOSS))
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_labels(6)
        .y_label_formatter(&|y| format!("{y:.3}"))
        .y_desc("validation macro-F1")
        .label_style(label_style)
        .axis_desc_style((FAMILY, 17.0).into_font().color(&F1))
        .draw()?;

    let best = inputs.best_epoch as f64;
    // The x axis title in neutral ink (the mesh would colour it like the loss axis title).
    let (plot_x, _) = chart.plotting_area().get_pixel_range();
    root.draw(&Text::new(
        "epoch",
        (
            (plot_x.start + plot_x.end) / 2,
            root.dim_in_pixel().1 as i32 - 12,
        ),
        text_style(17.0, MUTED, HPos::Center, VPos::Bottom),
    ))?;
    chart.draw_series(DashedLineSeries::new(
        [(best, loss_range.start), (best, loss_range.end)],
        8,
        6,
        BEST.stroke_width(2),
    ))?;

    let loss: Vec<(f64, f64)> = history
        .iter()
        .map(|point| (point.epoch as f64, point.train_loss))
        .collect();
    chart.draw_series(LineSeries::new(loss.iter().copied(), LOSS.stroke_width(3)))?;
    chart.draw_series(
        loss.iter()
            .map(|&point| Circle::new(point, 4, LOSS.filled())),
    )?;

    let f1: Vec<(f64, f64)> = history
        .iter()
        .map(|point| (point.epoch as f64, point.validation_macro_f1))
        .collect();
    chart.draw_secondary_series(LineSeries::new(f1.iter().copied(), F1.stroke_width(3)))?;
    chart.draw_secondary_series(f1.iter().map(|&(epoch, value)| {
        let size = if epoch == best { 7 } else { 4 };
        Circle::new((epoch, value), size, F1.filled())
    }))?;
    Ok(())
}

/// The curve's legend as one centred row under the titles, outside the plot so it never hides a
/// point.
fn draw_legend(root: &Root<'_>, best_epoch: usize, y: i32) -> DrawResult {
    let style = text_style(15.0, INK, HPos::Left, VPos::Center);
    let items = [
        (LOSS, false, "training loss (left axis)".to_owned()),
        (F1, false, "validation macro-F1 (right axis)".to_owned()),
        (
            BEST,
            true,
            format!("kept epoch ({best_epoch}): its weights are the model"),
        ),
    ];
    let (swatch, gap, spacing) = (28, 8, 28);
    let mut widths = Vec::with_capacity(items.len());
    for (_, _, label) in &items {
        widths.push(root.estimate_text_size(label, &style)?.0 as i32);
    }
    let total: i32 = widths.iter().map(|width| swatch + gap + width).sum::<i32>()
        + spacing * (items.len() as i32 - 1);
    let mut x = (root.dim_in_pixel().0 as i32 - total) / 2;
    for ((color, dashed, label), width) in items.iter().zip(widths) {
        if *dashed {
            for start in (0..swatch).step_by(12) {
                root.draw(&PathElement::new(
                    [(x + start, y), (x + (start + 7).min(swatch), y)],
                    color.stroke_width(2),
                ))?;
            }
        } else {
            root.draw(&PathElement::new(
                [(x, y), (x + swatch, y)],
                color.stroke_width(3),
            ))?;
            root.draw(&Circle::new((x + swatch / 2, y), 4, color.filled()))?;
        }
        root.draw(&Text::new(
            label.as_str(),
            (x + swatch + gap, y),
            style.clone(),
        ))?;
        x += swatch + gap + width + spacing;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentiflow_model::eval::evaluate;

    fn evaluation() -> Evaluation {
        // 3 classes, a plausible mix of right and wrong predictions.
        let mut predictions = Vec::new();
        let mut labels = Vec::new();
        for (label, predicted, times) in [
            (0, 0, 50),
            (0, 1, 9),
            (0, 2, 4),
            (1, 0, 8),
            (1, 1, 21),
            (1, 2, 6),
            (2, 0, 3),
            (2, 1, 5),
            (2, 2, 30),
        ] {
            for _ in 0..times {
                let mut probabilities = [0.2; 3];
                probabilities[predicted] = 0.6;
                predictions.push(probabilities);
                labels.push(label);
            }
        }
        evaluate(&predictions, &labels)
    }

    fn inputs(test: &Evaluation) -> ChartInputs<'_> {
        ChartInputs {
            name: "sentiment-hashed",
            version: "v7",
            test,
            history: [
                (0.98, 0.52),
                (0.81, 0.61),
                (0.74, 0.64),
                (0.70, 0.63),
                (0.68, 0.62),
            ]
            .iter()
            .enumerate()
            .map(|(index, &(train_loss, validation_macro_f1))| CurvePoint {
                epoch: index + 1,
                train_loss,
                validation_macro_f1,
            })
            .collect(),
            best_epoch: 3,
            planned_epochs: 8,
            patience: 2,
            min_epochs: 1,
        }
    }

    /// Decodes a PNG: (width, height, number of distinct colours).
    fn decode(bytes: &[u8]) -> (u32, u32, usize) {
        let image = png::decode_rgb(bytes).expect("a PNG");
        (image.width, image.height, image.distinct_colours())
    }

    fn font() -> PathBuf {
        let path = PathBuf::from(DEFAULT_FONT);
        assert!(
            path.exists(),
            "{DEFAULT_FONT} is missing: run infra/setup.sh (it installs fonts-dejavu-core)"
        );
        path
    }

    #[test]
    fn charts_are_real_images_and_reproducible() {
        let test = evaluation();
        let files = render(&inputs(&test), &font()).unwrap();
        let names: Vec<&str> = files.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, [CONFUSION_MATRIX_FILE, TRAINING_CURVE_FILE]);
        for ((_, bytes), size) in files.iter().zip([CONFUSION_SIZE, CURVE_SIZE]) {
            let (width, height, colours) = decode(bytes);
            assert_eq!((width, height), size);
            // Filled cells, lines and anti-aliased text: far more than a blank canvas's one colour.
            assert!(colours > 50, "{colours} distinct colours");
        }
        let again = render(&inputs(&test), &font()).unwrap();
        assert!(files == again, "same inputs, same bytes");

        // Different figures draw a different picture.
        let mut other = inputs(&test);
        other.best_epoch = 2;
        assert_ne!(render(&other, &font()).unwrap()[1].1, files[1].1);
    }

    #[test]
    fn render_or_skip_names_the_files_with_their_checksums() {
        let test = evaluation();
        let (charts, files) = render_or_skip(&inputs(&test), &font());
        let Charts::Written {
            confusion_matrix,
            training_curve,
        } = &charts
        else {
            panic!("charts written: {charts:?}");
        };
        for (chart, (name, bytes)) in [confusion_matrix, training_curve].into_iter().zip(&files) {
            assert_eq!(&chart.file, name);
            assert_eq!(chart.sha256, hex::encode(Sha256::digest(bytes)));
        }
        let json = serde_json::to_value(&charts).unwrap();
        assert_eq!(
            json["written"]["training_curve"]["file"],
            TRAINING_CURVE_FILE
        );
    }

    #[test]
    fn a_missing_or_broken_font_skips_the_charts_with_the_reason() {
        let test = evaluation();
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-font.ttf");
        let (charts, files) = render_or_skip(&inputs(&test), &missing);
        assert!(files.is_empty());
        let Charts::Skipped(reason) = &charts else {
            panic!("skipped: {charts:?}");
        };
        assert!(
            reason.contains("no-such-font.ttf") && reason.contains("fonts-dejavu-core"),
            "{reason}"
        );
        assert_eq!(
            serde_json::to_value(&charts).unwrap(),
            serde_json::json!({ "skipped": reason })
        );

        let broken = dir.path().join("broken.ttf");
        std::fs::write(&broken, b"not a font").unwrap();
        let error = render(&inputs(&test), &broken).unwrap_err();
        assert!(
            error.to_string().contains("not a TrueType/OpenType font"),
            "{error}"
        );
        // The good font still works afterwards.
        assert_eq!(render(&inputs(&test), &font()).unwrap().len(), 2);
    }

    #[test]
    fn unusable_inputs_are_refused() {
        let test = evaluation();
        let mut empty = inputs(&test);
        empty.history.clear();
        assert!(matches!(render(&empty, &font()), Err(ChartError::Input(_))));
        let mut nan = inputs(&test);
        nan.history[1].train_loss = f64::NAN;
        let error = render(&nan, &font()).unwrap_err();
        assert!(error.to_string().contains("epoch 2"), "{error}");
    }

    #[test]
    fn the_colour_ramp_runs_through_the_stops() {
        let rgb = |colour: RGBColor| (colour.0, colour.1, colour.2);
        assert_eq!(rgb(blues(0.0)), BLUES[0]);
        assert_eq!(rgb(blues(0.5)), BLUES[2]);
        assert_eq!(rgb(blues(1.0)), BLUES[4]);
        assert_eq!(rgb(blues(2.0)), BLUES[4]);
        assert_eq!(rgb(blues(0.125)), (223, 235, 247));
    }

    #[test]
    fn the_stopping_note_says_whether_early_stopping_ended_the_run() {
        let test = evaluation();
        let early = inputs(&test);
        assert!(stopping_note(&early).contains("stopped after epoch 5 of 8"));
        let mut full = inputs(&test);
        full.planned_epochs = 5;
        assert!(stopping_note(&full).contains("all 5 planned epochs ran"));
    }
}
