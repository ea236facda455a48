//! Temporary: graph-variant timing.
mod onnx_support;
use std::time::Instant;
use onnx_support::{Rng, ort_env, random_batch, random_model, test_metadata};
use prost::Message;
use sentiflow_model::onnx::{export_hashed, proto::{self, ModelProto}};
use sentiflow_model::runtime::{DeviceRequest, LoadedModel};

fn node(op: &str, i: &[&str], o: &[&str], attrs: Vec<proto::AttributeProto>) -> proto::NodeProto {
    proto::NodeProto { name: Some(o[0].into()), op_type: Some(op.into()), input: i.iter().map(|s| s.to_string()).collect(), output: o.iter().map(|s| s.to_string()).collect(), attribute: attrs, ..Default::default() }
}
fn int(name: &str, v: i64) -> proto::AttributeProto { proto::AttributeProto { name: Some(name.into()), r#type: Some(2), i: Some(v), ..Default::default() } }
fn i64t(name: &str, dims: &[i64], v: &[i64]) -> proto::TensorProto { proto::TensorProto { name: Some(name.into()), data_type: Some(7), dims: dims.to_vec(), raw_data: Some(v.iter().flat_map(|x| x.to_le_bytes()).collect()), ..Default::default() } }

fn time(label: &str, bytes: &[u8], batches: &[Vec<i64>]) {
    let env = ort_env();
    let mut m = LoadedModel::load(&env, bytes, DeviceRequest::Cpu, 1).unwrap();
    m.warm_up(&[64], 256).unwrap();
    let start = Instant::now(); let mut n = 0;
    while start.elapsed().as_secs_f64() < 3.0 { std::hint::black_box(m.predict(&batches[n % batches.len()], 256, 64).unwrap()); n += 1; }
    eprintln!("{label}: {:.0} rows/s", (n * 256) as f64 / start.elapsed().as_secs_f64());
}

#[test]
#[ignore]
fn variants() { for _round in 0..3 {
    let model = random_model(1 << 18, 32, 42);
    let base = export_hashed(&model, &test_metadata("b")).unwrap();
    let mut rng = Rng::new(3);
    let batches: Vec<Vec<i64>> = (0..8).map(|_| random_batch(256, 64, 1 << 18, &mut rng)).collect();
    time("v0 mul+reducesum", &base, &batches);
    // v1: MatMul(mask [B,1,T], vectors [B,T,D]) -> [B,1,D] -> Squeeze
    let mut p = ModelProto::decode(base.as_slice()).unwrap();
    let g = p.graph.as_mut().unwrap();
    g.initializer.push(i64t("mid_axis", &[1], &[1]));
    let mut nodes = g.node.clone();
    // replace Unsqueeze(mask,last)->mask_3d, Mul, ReduceSum(masked) with Unsqueeze(mask, mid) -> MatMul -> Squeeze
    nodes[4] = node("Unsqueeze", &["mask", "mid_axis"], &["mask_row"], vec![]);
    nodes[5] = node("MatMul", &["mask_row", "token_vectors"], &["summed_3d"], vec![]);
    nodes[6] = node("Squeeze", &["summed_3d", "mid_axis"], &["vector_sum"], vec![]);
    g.node = nodes;
    time("v1 matmul", &p.encode_to_vec(), &batches);
    // v2: no masking multiply (row 0 zero)
    let mut p = ModelProto::decode(base.as_slice()).unwrap();
    let g = p.graph.as_mut().unwrap();
    let mut nodes = g.node.clone();
    nodes[6] = node("ReduceSum", &["token_vectors", "token_axis"], &["vector_sum"], vec![int("keepdims", 0)]);
    nodes.remove(5); nodes.remove(4);
    g.node = nodes;
    time("v2 no mul", &p.encode_to_vec(), &batches);
    }
}
