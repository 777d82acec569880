// Status colours shared by the charts (ECharts) and the DAG (plain SVG, no ECharts).
export const STATUS_COLORS = {
  COMPLETED: "#2e9d57", FAILED: "#d64545", RETRYING: "#e8912d", RUNNING: "#3b82f6", PENDING: "#b8bec8",
  SKIPPED: "#9aa3ad", CANCELLED: "#7b7f86", COMPENSATING: "#e9c229", COMPENSATED: "#d9b310",
};
