#!/usr/bin/env Rscript
# Standalone cross-check of clusterlmer with plain lme4 + lmerTest.
#
# Fits `formula` separately for every response column of a CSV with
# lmerTest::lmer and prints a MATLAB-layout ANOVA table per column:
#   sample,Term,FStat,DF1,DF2,pValue
# and, with --coefficients, lmerTest's summary() coefficient table per column:
#   sample,Name,Estimate,SE,tStat,DF,pValue
# It shares no code with clusterlmer: use it to verify any result.
#
# Usage:
#   Rscript lmer_reference.R --csv data.csv --formula "y ~ cond + (1|sid)" \
#     [--values t0,t1,...]      response columns (default: the formula's LHS)
#     [--reml TRUE|FALSE]       default TRUE
#     [--ddf satterthwaite|residual|kenward-roger|none]
#     [--coding reference|effects] [--test marginal|type3|type2|type1]
#     [--levels "region=phrc,hc;cond=b,a"]   level order, reference first
#     [--optimizer bobyqa] [--rhoend 1e-9] [--maxfun 100000]
#     [--out result.csv]        default: standard output
#     [--coefficients coef.csv] also write the coefficient tables
#
# Level order follows MATLAB: text columns used as fixed effects are factors
# with levels in order of first appearance; numeric columns stay numeric
# unless --levels names them, with one exception (as clusterlmer): a numeric
# column with exactly two values that interacts with another fixed-effect
# variable is a factor with its values sorted, unless the two values are
# centred on 0 (e.g. -0.5/0.5), so that the main effects next to it are
# never effects at a value 0 that is not in the data.

suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
})

parse_args <- function(args) {
  opts <- list(reml = "TRUE", ddf = "satterthwaite", coding = "reference", test = "marginal",
               optimizer = "bobyqa", rhoend = "1e-9", maxfun = "100000", levels = "")
  i <- 1L
  while (i <= length(args)) {
    key <- sub("^--", "", args[i])
    if (i == length(args) || !startsWith(args[i], "--")) stop("expected --option value pairs, got ", args[i])
    opts[[key]] <- args[i + 1L]
    i <- i + 2L
  }
  for (req in c("csv", "formula")) if (is.null(opts[[req]])) stop("missing --", req)
  opts
}

parse_levels <- function(spec) {
  if (!nzchar(spec)) return(list())
  parts <- strsplit(strsplit(spec, ";", fixed = TRUE)[[1]], "=", fixed = TRUE)
  stats::setNames(lapply(parts, function(p) strsplit(p[2], ",", fixed = TRUE)[[1]]),
                  vapply(parts, `[`, "", 1))
}

main <- function() {
  opts <- parse_args(commandArgs(trailingOnly = TRUE))
  d <- utils::read.csv(opts$csv, stringsAsFactors = FALSE, check.names = FALSE)
  f <- stats::as.formula(opts$formula)
  response <- all.vars(f[[2]])
  value_cols <- if (is.null(opts$values)) response else strsplit(opts$values, ",", fixed = TRUE)[[1]]
  reml <- as.logical(opts$reml)
  coding <- opts$coding

  # Fixed-effect variables (and random-slope variables) get MATLAB's level
  # order and the chosen coding; grouping factors are left to lme4.
  fixed_vars <- all.vars(lme4::nobars(f)[[3]])
  slope_vars <- unlist(lapply(lme4::findbars(f), function(b) all.vars(b[[2]])))
  levels_given <- parse_levels(opts$levels)
  incidence <- attr(stats::terms(lme4::nobars(f)), "factors")
  interacting <- if (length(incidence)) {
    rownames(incidence)[rowSums(incidence[, colSums(incidence > 0) > 1, drop = FALSE] > 0) > 0]
  } else character(0)
  for (v in unique(c(fixed_vars, slope_vars))) {
    x <- d[[v]]
    two <- is.numeric(x) && v %in% interacting && length(unique(x)) == 2 && sum(unique(x)) != 0
    if (!(v %in% names(levels_given)) && is.numeric(x) && !two) next
    lev <- if (v %in% names(levels_given)) levels_given[[v]] else if (two) as.character(sort(unique(x))) else unique(as.character(x))
    fx <- factor(as.character(x), levels = lev)
    if (coding == "effects") contrasts(fx) <- contr.sum(nlevels(fx))
    d[[v]] <- fx
  }

  ctrl <- lmerControl(optimizer = opts$optimizer,
                      optCtrl = list(rhoend = as.numeric(opts$rhoend), maxfun = as.numeric(opts$maxfun)))
  ddf_lt <- if (opts$ddf == "kenward-roger") "Kenward-Roger" else "Satterthwaite"
  rows <- list()
  coefs <- list()
  for (j in seq_along(value_cols)) {
    d[[response]] <- d[[value_cols[j]]]
    m <- lmerTest::lmer(f, data = d, REML = reml, control = ctrl)
    if (opts$test == "marginal") {
      tab <- anova(m, type = "marginal", ddf = ddf_lt)
      X <- model.matrix(m)
      L0 <- matrix(as.numeric(colnames(X) == "(Intercept)"), nrow = 1)
      if (sum(L0) == 1) tab <- rbind("(Intercept)" = contestMD(m, L0, ddf = ddf_lt)[, colnames(tab)], tab)
    } else {
      tab <- anova(m, type = c(type3 = "III", type2 = "II", type1 = "I")[[opts$test]], ddf = ddf_lt)
    }
    FStat <- tab[["F value"]]
    DF1 <- tab[["NumDF"]]
    DF2 <- tab[["DenDF"]]
    pValue <- tab[["Pr(>F)"]]
    if (opts$ddf %in% c("residual", "none")) {
      DF2 <- rep(if (opts$ddf == "residual") nrow(model.matrix(m)) - qr(model.matrix(m))$rank else Inf, length(FStat))
      pValue <- pf(FStat, DF1, DF2, lower.tail = FALSE)
    }
    rows[[j]] <- data.frame(sample = j - 1L, Term = rownames(tab), FStat = FStat, DF1 = DF1,
                            DF2 = DF2, pValue = pValue, check.names = FALSE)
    if (!is.null(opts$coefficients)) {
      co <- summary(m, ddf = ddf_lt)$coefficients
      DF <- co[, "df"]
      if (opts$ddf %in% c("residual", "none")) {
        DF <- rep(if (opts$ddf == "residual") nrow(model.matrix(m)) - qr(model.matrix(m))$rank else Inf, nrow(co))
      }
      tStat <- co[, "Estimate"] / co[, "Std. Error"]
      coefs[[j]] <- data.frame(sample = j - 1L, Name = rownames(co), Estimate = co[, "Estimate"],
                               SE = co[, "Std. Error"], tStat = tStat, DF = DF,
                               pValue = 2 * pt(abs(tStat), DF, lower.tail = FALSE), check.names = FALSE)
    }
  }
  if (!is.null(opts$coefficients)) {
    utils::write.csv(do.call(rbind, coefs), opts$coefficients, row.names = FALSE)
  }
  out <- do.call(rbind, rows)
  if (is.null(opts$out)) {
    utils::write.csv(out, stdout(), row.names = FALSE)
  } else {
    utils::write.csv(out, opts$out, row.names = FALSE)
  }
}

main()
