"""DeepSORT's constant-velocity Kalman filter on boxes.

State x = (cx, cy, a, h, vcx, vcy, va, vh): box centre (pixels), aspect ratio a = w / h,
height h (pixels) and their velocities (per frame). Measurement z = (cx, cy, a, h).
Process and measurement noise scale with the box height (Wojke et al. 2017): position
std h / 20, velocity std h / 160, aspect ratio stds 1e-2 (process) and 1e-1 (measurement).
"""
from __future__ import annotations

import numpy as np
import scipy.special

# Squared Mahalanobis distance below which a measurement may belong to a track:
# the 0.95 quantile of chi-square with 4 (cx, cy, a, h) or 2 (cx, cy) degrees of freedom.
# (chdtri: the inverse of chi-square's survival function; scipy.stats costs seconds to import.)
CHI2_95 = {dof: float(scipy.special.chdtri(dof, 0.05)) for dof in (2, 4)}


class KalmanFilter:
  """Predict / update / gate for one box; every method is pure (arrays in, arrays out)."""
  POSITION_STD = 1 / 20
  VELOCITY_STD = 1 / 160

  def __init__(self):
    self.F = np.eye(8)            # x_{t+1} = F x_t: constant velocity, dt = 1 frame
    self.F[:4, 4:] = np.eye(4)
    self.H = np.eye(4, 8)         # z = H x

  def initiate(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A new track at measurement z f[4]: mean f64[8] (zero velocity), covariance f64[8, 8]."""
    h = z[3]
    std = [2 * self.POSITION_STD * h, 2 * self.POSITION_STD * h, 1e-2, 2 * self.POSITION_STD * h,
           10 * self.VELOCITY_STD * h, 10 * self.VELOCITY_STD * h, 1e-5,
           10 * self.VELOCITY_STD * h]
    return np.r_[np.asarray(z, np.float64), np.zeros(4)], np.diag(np.square(std))

  def predict(self, mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One frame ahead: x' = F x, P' = F P Fᵀ + Q (Q from the current height)."""
    h = mean[3]
    std = [self.POSITION_STD * h, self.POSITION_STD * h, 1e-2, self.POSITION_STD * h,
           self.VELOCITY_STD * h, self.VELOCITY_STD * h, 1e-5, self.VELOCITY_STD * h]
    return self.F @ mean, self.F @ cov @ self.F.T + np.diag(np.square(std))

  def project(self, mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The predicted measurement H x f[4] and its covariance S = H P Hᵀ + R f[4, 4]."""
    h = mean[3]
    r = np.square([self.POSITION_STD * h, self.POSITION_STD * h, 1e-1, self.POSITION_STD * h])
    return self.H @ mean, self.H @ cov @ self.H.T + np.diag(r)

  def update(self, mean: np.ndarray, cov: np.ndarray,
             z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Corrects (mean, cov) with measurement z f[4]: K = P Hᵀ S⁻¹, x += K (z − H x),
    P −= K S Kᵀ."""
    z_mean, s = self.project(mean, cov)
    gain = np.linalg.solve(s, self.H @ cov).T  # S and P are symmetric: (S⁻¹ H P)ᵀ = P Hᵀ S⁻¹
    return mean + gain @ (np.asarray(z) - z_mean), cov - gain @ s @ gain.T

  def gating_distance(self, mean: np.ndarray, cov: np.ndarray, zs: np.ndarray,
                      only_position: bool = False) -> np.ndarray:
    """Squared Mahalanobis distances f[N] of measurements zs f[N, 4] to the predicted
    measurement (only cx, cy when `only_position`); compare with CHI2_95."""
    z_mean, s = self.project(mean, cov)
    d = np.asarray(zs, np.float64).reshape(-1, 4) - z_mean
    if only_position:
      d, s = d[:, :2], s[:2, :2]
    return np.sum(d * np.linalg.solve(s, d.T).T, axis=1)
