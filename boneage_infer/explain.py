"""Where the model looked: Grad-CAM (Selvaraju et al., ICCV 2017) on the last convolutional block."""

from __future__ import annotations

import cv2
import numpy as np

LAST_CONV_LAYER = "last_conv"


def grad_cam_model(model):
    """A model that returns the last convolutional activations and the bone-age output."""
    import keras

    return keras.Model(model.inputs, [model.get_layer(LAST_CONV_LAYER).output, model.output["bone_age_z"]])


def grad_cam(cam_model, image: np.ndarray, male: bool) -> np.ndarray:
    """Heatmap in [0, 1] at the input's size: channels weighted by the bone-age gradient."""
    import tensorflow as tf

    inputs = {"image": tf.constant(image[None], tf.float32), "sex": tf.constant([[float(male)]])}
    with tf.GradientTape() as tape:
        activations, output = cam_model(inputs, training=False)
        target = tf.reduce_sum(output)
    gradients = tape.gradient(target, activations)[0].numpy()
    activations = activations[0].numpy()
    weights = gradients.mean(axis=(0, 1))
    cam = activations @ weights
    if cam.max() <= 0:  # every region lowers the estimate: show the strongest of those instead
        cam = -cam
    cam = np.maximum(cam, 0)
    cam = cv2.resize(cam, image.shape[1::-1], interpolation=cv2.INTER_CUBIC)
    cam = np.maximum(cam, 0)
    return cam / cam.max() if cam.max() > 0 else cam


def overlay(enhanced: np.ndarray, heat: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """The heatmap in colour (JET) over the greyscale radiograph; RGB uint8."""
    heat = cv2.resize(heat.astype(np.float32), enhanced.shape[::-1], interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap(np.uint8(255 * np.clip(heat, 0, 1)), cv2.COLORMAP_JET)
    base = cv2.cvtColor(enhanced, cv2.COLOR_GRAY2BGR)
    mixed = cv2.addWeighted(colour, alpha, base, 1 - alpha, 0)
    return cv2.cvtColor(mixed, cv2.COLOR_BGR2RGB)
