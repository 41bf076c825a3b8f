#!/usr/bin/env python3
"""Runs an ONNX model in onnxruntime: ort_run.py MODEL.onnx INPUT.npy OUTPUT.npy [THREADS]"""
import sys

import numpy as np
import onnxruntime as ort

so = ort.SessionOptions()
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
so.intra_op_num_threads = int(sys.argv[4]) if len(sys.argv) > 4 else 1
session = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
np.save(sys.argv[3], session.run(None, {"input": np.load(sys.argv[2])})[0])
